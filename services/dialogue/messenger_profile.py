"""A page's Messenger profile, as the domain file declares it.

    messenger_profile:
      get_started: GET_STARTED          # the Get Started button's postback payload
      greeting:                         # the welcome screen's text, per locale
        default: "Hi {{user_first_name}}! Ask me about an order."
        fr_FR: "Bonjour {{user_first_name}} !"
      persistent_menu:                  # per locale, up to 20 items (menus are flat)
        default:
          - {title: "Order status", payload: /order_status}
          - {title: "Our shop", url: "https://shop.example/", webview_height_ratio: full}
        fr_FR:
          composer_input_disabled: false
          items: [{title: "Ma commande", payload: /order_status}]
      ice_breakers:                     # per locale, up to 4 questions
        default:
          - {question: "Where is my order?", payload: /order_status}

``chatbot messenger-profile apply`` makes the page match this through the
Messenger Profile API. The four fields are managed as a whole: one the section
leaves out is removed from the page; the page's other fields are never touched.
Meta's limits are checked when the file is read, so a bad file fails before any
call (and the dialogue service refuses to start with it): a ``default`` locale
wherever there are locales, greeting text up to 160 characters, payloads up to
1000, menu titles up to 30, at most 20 menu items and 4 ice breakers per
locale, and a Get Started button whenever there is a menu (Meta's 2018145).

``graph()`` gives the fields as the API takes them, and ``canonical`` brings
what the API answers to the same shape, so the two compare with ``==``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from mesh.config import ConfigError

FIELDS = ("get_started", "greeting", "persistent_menu", "ice_breakers")
GREETING_MAX = 160
PAYLOAD_MAX = 1000
MENU_TITLE_MAX = 30
MENU_ITEMS_MAX = 20
ICE_BREAKERS_MAX = 4
_LOCALE = re.compile(r"^(default|[a-z]{2,3}_[A-Z]{2})$")
_HEIGHTS = ("compact", "tall", "full")


@dataclass(frozen=True)
class MenuItem:
    title: str
    payload: str = ""  # a postback item
    url: str = ""  # a web_url item
    webview_height_ratio: str = ""
    webview_share_button: str = ""

    def graph(self) -> dict[str, Any]:
        if self.url:
            item: dict[str, Any] = {"type": "web_url", "title": self.title, "url": self.url}
            if self.webview_height_ratio:
                item["webview_height_ratio"] = self.webview_height_ratio
            if self.webview_share_button:
                item["webview_share_button"] = self.webview_share_button
            return item
        return {"type": "postback", "title": self.title, "payload": self.payload}


@dataclass(frozen=True)
class Menu:
    locale: str
    items: tuple[MenuItem, ...]
    composer_input_disabled: bool = False


@dataclass(frozen=True)
class IceBreaker:
    question: str
    payload: str


@dataclass(frozen=True)
class MessengerProfile:
    get_started: str = ""
    greeting: Mapping[str, str] | None = None  # locale -> text
    persistent_menu: tuple[Menu, ...] = ()
    ice_breakers: Mapping[str, tuple[IceBreaker, ...]] | None = None  # locale -> questions

    def graph(self) -> dict[str, Any]:
        """The fields to set, as the Messenger Profile API takes them (absent: to remove)."""
        raw: dict[str, Any] = {}
        if self.get_started:
            raw["get_started"] = {"payload": self.get_started}
        if self.greeting:
            raw["greeting"] = [{"locale": k, "text": v} for k, v in self.greeting.items()]
        if self.persistent_menu:
            raw["persistent_menu"] = [
                {
                    "locale": menu.locale,
                    "composer_input_disabled": menu.composer_input_disabled,
                    "call_to_actions": [item.graph() for item in menu.items],
                }
                for menu in self.persistent_menu
            ]
        if self.ice_breakers:
            raw["ice_breakers"] = [
                {
                    "locale": locale,
                    "call_to_actions": [
                        {"question": q.question, "payload": q.payload} for q in questions
                    ],
                }
                for locale, questions in self.ice_breakers.items()
            ]
        return {name: canonical(name, value) for name, value in raw.items()}

    def payloads(self) -> Iterator[tuple[str, str]]:
        """(where, payload) of every postback the profile can send."""
        if self.get_started:
            yield "get_started", self.get_started
        for menu in self.persistent_menu:
            for i, item in enumerate(menu.items):
                if not item.url:
                    yield f"persistent_menu.{menu.locale}[{i}]", item.payload
        for locale, questions in (self.ice_breakers or {}).items():
            for i, question in enumerate(questions):
                yield f"ice_breakers.{locale}[{i}]", question.payload


# ---- reading the domain file's section ---------------------------------------


def _text(value: Any, where: str, limit: int, what: str) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool) or value == "":
        raise ConfigError(f"{where}: {what} must be non-empty text")
    text = str(value)
    if len(text) > limit:
        raise ConfigError(f"{where}: {what} is {len(text)} characters; Meta allows {limit}")
    return text


def _keys(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(sorted(allowed))})"
        )


def _locales(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: a mapping of locale to its value, e.g. {{default: ...}}")
    out: dict[str, Any] = {}
    for locale, value in raw.items():
        locale = str(locale)
        if not _LOCALE.match(locale):
            raise ConfigError(f"{where}: {locale!r} is not a locale (default, en_US, fr_FR, ...)")
        out[locale] = value
    if "default" not in out:
        raise ConfigError(f"{where}: the 'default' locale is required (shown when none matches)")
    # The default first: it reads first and compares in a fixed order.
    return {k: out[k] for k in sorted(out, key=lambda k: (k != "default", k))}


def _menu_item(raw: Any, where: str) -> MenuItem:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a menu item is {{title, payload}} or {{title, url}}")
    if raw.get("type") == "nested" or "call_to_actions" in raw:
        raise ConfigError(
            f"{where}: nested menus were removed in Graph API v8.0; "
            f"list up to {MENU_ITEMS_MAX} items instead"
        )
    _keys(raw, {"type", "title", "payload", "url", "webview_height_ratio", "webview_share_button"},
          where)  # fmt: skip
    title = _text(raw.get("title"), where, MENU_TITLE_MAX, "title")
    kind = raw.get("type") or ("web_url" if "url" in raw else "postback")
    if kind == "postback":
        if "url" in raw:
            raise ConfigError(f"{where}: a postback item has a payload, not a url")
        return MenuItem(title, payload=_text(raw.get("payload"), where, PAYLOAD_MAX, "payload"))
    if kind != "web_url":
        raise ConfigError(f"{where}: type {kind!r} is not postback or web_url")
    if "payload" in raw:
        raise ConfigError(f"{where}: a web_url item has a url, not a payload")
    url = _text(raw.get("url"), where, 2000, "url")
    parsed = urlparse(url)
    if parsed.scheme not in ("https", "http") or not parsed.netloc:
        raise ConfigError(f"{where}: url {url!r} is not an http(s) address")
    height = str(raw.get("webview_height_ratio") or "")
    if height and height not in _HEIGHTS:
        raise ConfigError(f"{where}: webview_height_ratio is one of {', '.join(_HEIGHTS)}")
    share = str(raw.get("webview_share_button") or "")
    if share and share not in ("hide", "show"):
        raise ConfigError(f"{where}: webview_share_button is hide or show")
    return MenuItem(title, url=url, webview_height_ratio=height, webview_share_button=share)


def _menu(locale: str, raw: Any, where: str) -> Menu:
    disabled = False
    if isinstance(raw, dict):
        _keys(raw, {"items", "composer_input_disabled"}, where)
        disabled = raw.get("composer_input_disabled", False)
        if not isinstance(disabled, bool):
            raise ConfigError(f"{where}.composer_input_disabled: true or false")
        raw = raw.get("items")
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: a list of menu items (or {{items: [...]}})")
    if len(raw) > MENU_ITEMS_MAX:
        raise ConfigError(f"{where}: {len(raw)} items; Meta allows {MENU_ITEMS_MAX} per locale")
    items = tuple(_menu_item(item, f"{where}[{i}]") for i, item in enumerate(raw))
    return Menu(locale, items, disabled)


def _ice_breakers(raw: Any, where: str) -> tuple[IceBreaker, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: a list of {{question, payload}}")
    if len(raw) > ICE_BREAKERS_MAX:
        raise ConfigError(f"{where}: {len(raw)} ice breakers; Meta allows {ICE_BREAKERS_MAX}")
    out = []
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{at}: an ice breaker is {{question, payload}}")
        _keys(item, {"question", "payload"}, at)
        out.append(
            IceBreaker(
                _text(item.get("question"), at, PAYLOAD_MAX, "question"),
                _text(item.get("payload"), at, PAYLOAD_MAX, "payload"),
            )
        )
    return tuple(out)


def parse_messenger_profile(raw: Any, where: str) -> MessengerProfile:
    """The domain file's ``messenger_profile`` section, checked against Meta's limits."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a mapping with {', '.join(FIELDS)}")
    _keys(raw, set(FIELDS), where)
    get_started = raw.get("get_started")
    if isinstance(get_started, dict):
        _keys(get_started, {"payload"}, f"{where}.get_started")
        get_started = get_started.get("payload")
    payload = (
        _text(get_started, f"{where}.get_started", PAYLOAD_MAX, "payload")
        if get_started is not None
        else ""
    )
    greeting = None
    if raw.get("greeting") is not None:
        greeting = {
            locale: _text(text, f"{where}.greeting.{locale}", GREETING_MAX, "greeting text")
            for locale, text in _locales(raw["greeting"], f"{where}.greeting").items()
        }
    menus: tuple[Menu, ...] = ()
    if raw.get("persistent_menu") is not None:
        at = f"{where}.persistent_menu"
        menus = tuple(
            _menu(locale, value, f"{at}.{locale}")
            for locale, value in _locales(raw["persistent_menu"], at).items()
        )
        if not payload:
            raise ConfigError(f"{at}: Messenger shows a menu only with a Get Started button; "
                              "set get_started too")  # fmt: skip
    ice = None
    if raw.get("ice_breakers") is not None:
        at = f"{where}.ice_breakers"
        ice = {
            locale: _ice_breakers(value, f"{at}.{locale}")
            for locale, value in _locales(raw["ice_breakers"], at).items()
        }
    return MessengerProfile(payload, greeting, menus, ice)


# ---- comparing with what the page has ----------------------------------------


def _by_locale(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(entries, key=lambda e: (e.get("locale") != "default", str(e.get("locale"))))


def _item(raw: dict[str, Any]) -> dict[str, Any]:
    keep = ("type", "title", "payload", "url", "webview_height_ratio", "webview_share_button")
    return {k: raw[k] for k in keep if raw.get(k) not in (None, "")}


def canonical(field: str, value: Any) -> Any:
    """``value`` of ``field`` in one shape: locales in order, defaults left out."""
    if field == "get_started" and isinstance(value, dict):
        return {"payload": value.get("payload")}
    if not isinstance(value, list):
        return value
    if field == "greeting":
        return _by_locale([{"locale": g.get("locale"), "text": g.get("text")} for g in value])
    if field == "persistent_menu":
        menus = []
        for menu in value:
            entry: dict[str, Any] = {"locale": menu.get("locale")}
            if menu.get("composer_input_disabled"):
                entry["composer_input_disabled"] = True
            entry["call_to_actions"] = [_item(i) for i in menu.get("call_to_actions") or []]
            menus.append(entry)
        return _by_locale(menus)
    if field == "ice_breakers":
        if value and "question" in value[0]:  # the format before locales: the default's
            value = [{"locale": "default", "call_to_actions": value}]
        return _by_locale(
            [
                {
                    "locale": entry.get("locale", "default"),
                    "call_to_actions": [
                        {"question": q.get("question"), "payload": q.get("payload")}
                        for q in entry.get("call_to_actions") or []
                    ],
                }
                for entry in value
            ]
        )
    return value


@dataclass(frozen=True)
class Change:
    field: str
    before: Any  # None: not set on the page
    after: Any  # None: to remove from the page

    @property
    def kind(self) -> str:
        return "set" if self.before is None else "remove" if self.after is None else "change"


def changes(desired: Mapping[str, Any], current: Mapping[str, Any]) -> list[Change]:
    """What makes the page's managed fields (``current``, as the API answers) ``desired``."""
    out = []
    for field in FIELDS:
        before = canonical(field, current[field]) if current.get(field) else None
        after = desired.get(field)
        if before != after:
            out.append(Change(field, before, after))
    return out
