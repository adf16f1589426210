"""The console's small parts on their own: hashes, escaping, charts, settings."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from mesh import ConfigError, Env
from services.gateway.admin import charts, passwords
from services.gateway.admin.auth import same_origin
from services.gateway.admin.render import linkify, safe_url
from services.gateway.admin.settings import AdminSettings
from services.gateway.admin.users import InvalidUser, User, normalize_name, normalize_tenants


def test_password_hashes_are_salted_and_verified() -> None:
    first, second = passwords.hash_password("s3cret-pass"), passwords.hash_password("s3cret-pass")
    assert first != second  # a salt of its own each
    assert first.startswith(f"scrypt${passwords.LOG2_N}$")
    assert "s3cret-pass" not in first
    assert passwords.verify_password("s3cret-pass", first)
    assert not passwords.verify_password("s3cret-pasS", first)
    assert not passwords.verify_password("x" * 5000, first)
    assert not passwords.needs_rehash(first)
    with pytest.raises(passwords.InvalidHash):
        passwords.verify_password("s3cret-pass", "md5$abc")
    with pytest.raises(ValueError):
        passwords.hash_password("")


def test_older_cheaper_hashes_still_verify_and_ask_for_a_rehash() -> None:
    cheap = passwords.hash_password("pw-12345678").replace(
        f"scrypt${passwords.LOG2_N}$", "scrypt$14$", 1
    )
    assert passwords.needs_rehash(cheap)
    assert not passwords.verify_password("pw-12345678", cheap)  # other cost, other key


def test_linkify_escapes_and_links_only_web_urls() -> None:
    html = str(linkify('see <b>https://a.example/x?y=1&z="2"</b>, javascript:alert(1) ok.'))
    assert "<b>" not in html and "&lt;b&gt;" in html
    assert '<a href="https://a.example/x?y=1&amp;z=' in html
    assert 'rel="noopener noreferrer nofollow"' in html
    assert "javascript:alert(1)" in html and 'href="javascript' not in html
    assert str(linkify("end with https://b.example/path.")).endswith("</a>.")
    assert safe_url("javascript:alert(1)") == "" and safe_url(" data:x") == ""
    assert safe_url("https://cdn.example/a.jpg") == "https://cdn.example/a.jpg"


def test_charts_are_well_formed_labelled_svg() -> None:
    labels = ["03-01", "03-02", "03-03"]
    drawn = [
        charts.stacked_bars(
            "c1", "Messages <per> day", labels,
            [charts.Series("in", [1, 5, 0], "s1"), charts.Series("out", [2, 0, 9], "s2")],
        ),
        charts.lines("c2", "Latency", labels, [charts.Series("p95", [10, 250.5, 0], "s3")], " ms"),
        charts.horizontal_bars("c3", "Intents", [("greet", 4), ("<script>", 1)]),
        charts.lines("c4", "Empty", [], [charts.Series("none", [], "s1")]),
    ]  # fmt: skip
    for svg in drawn:
        root = ET.fromstring(str(svg))
        assert root.get("role") == "img"
        ns = "{http://www.w3.org/2000/svg}"
        assert root.find(f"{ns}title") is not None and root.find(f"{ns}desc") is not None
    assert "Messages &lt;per&gt; day" in str(drawn[0])
    assert "<script>" not in str(drawn[2])
    assert "03-02: 251 ms" in str(drawn[1]) or "03-02: 250 ms" in str(drawn[1])


def test_settings_fail_loudly() -> None:
    assert AdminSettings.from_env(Env({})).bootstrap_username is None
    with pytest.raises(ConfigError, match="together"):
        AdminSettings.from_env(Env({"ADMIN_USERNAME": "root"}))
    with pytest.raises(ConfigError, match="8 characters"):
        AdminSettings.from_env(Env({"ADMIN_USERNAME": "root", "ADMIN_PASSWORD": "short"}))
    with pytest.raises(ConfigError, match="ADMIN_COOKIE_SECURE"):
        AdminSettings.from_env(Env({"ADMIN_COOKIE_SECURE": "maybe"}))
    with pytest.raises(ConfigError, match="ADMIN_IMG_SRC"):
        AdminSettings.from_env(Env({"ADMIN_IMG_SRC": "https:; script-src *"}))
    settings = AdminSettings.from_env(
        Env({"ADMIN_USERNAME": "root", "ADMIN_PASSWORD": "long-enough", "ADMIN_COOKIE_SECURE": "1"})
    )
    assert settings.cookie_secure == "true"
    assert "long-enough" not in repr(settings)


def test_password_from_a_file(tmp_path: object) -> None:
    from pathlib import Path

    secret = Path(str(tmp_path)) / "password"
    secret.write_text("from-a-file-1\n", encoding="utf-8")
    env = Env({"ADMIN_USERNAME": "root", "ADMIN_PASSWORD_FILE": str(secret)})
    assert AdminSettings.from_env(env).bootstrap_password == "from-a-file-1"


def test_user_names_and_grants() -> None:
    assert normalize_name("  Ann.Smith@Example ") == "ann.smith@example"
    for bad in ("", "-x", "a b", "x" * 65, "ann:1"):
        with pytest.raises(InvalidUser):
            normalize_name(bad)
    assert normalize_tenants(["b", "a", "b"]) == ("a", "b")
    assert normalize_tenants(["a", "*"]) == ("*",)
    with pytest.raises(InvalidUser):
        normalize_tenants([" "])
    everyone = User("root", "admin", ("*",))
    assert everyone.granted(["acme", "globex"]) == {"acme", "globex"}
    assert User("gus", "viewer", ("globex", "gone")).granted(["acme", "globex"]) == {"globex"}
    assert "password" not in repr(User("x", "viewer", ("a",), password_hash="scrypt$secret"))


def test_same_origin_checks_origin_then_referer() -> None:
    from starlette.requests import Request

    def request(**headers: str) -> Request:
        raw = [(k.lower().encode(), v.encode()) for k, v in {"host": "a.test", **headers}.items()]
        return Request({"type": "http", "method": "POST", "path": "/", "headers": raw})

    assert same_origin(request())
    assert same_origin(request(origin="https://a.test"))
    assert not same_origin(request(origin="https://b.test"))
    assert not same_origin(request(origin="null"))
    assert same_origin(request(referer="http://a.test/admin/x"))
    assert not same_origin(request(referer="http://a.test.evil/admin"))
