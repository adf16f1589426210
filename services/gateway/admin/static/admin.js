// The chatbot admin console: a live transcript and an agent's replies without a reload.
// Everything works without this script; it only makes the transcript follow new messages.
(function () {
  "use strict";

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  function setHandedOff(handedOff, agent) {
    var status = document.getElementById("handoff-status");
    if (status) {
      status.dataset.handedOff = handedOff ? "true" : "false";
      status.textContent = handedOff
        ? "A person has this conversation" + (agent ? " (" + agent + ")" : "") + ": the bot stays silent."
        : "The bot answers this conversation.";
    }
    document.querySelectorAll('[data-when="bot"]').forEach(function (el) { el.hidden = handedOff; });
    document.querySelectorAll('[data-when="person"]').forEach(function (el) { el.hidden = !handedOff; });
  }

  function follow(list) {
    var url = list.dataset.live;
    if (!url || !window.EventSource) { return; }
    var source = new EventSource(url);
    source.addEventListener("message", function (event) {
      var data = JSON.parse(event.data);
      if (document.getElementById("msg-" + data.id)) { return; }
      var nearBottom = window.innerHeight + window.scrollY >= document.body.offsetHeight - 80;
      var template = document.createElement("template");
      template.innerHTML = data.html.trim();
      list.appendChild(template.content);
      if (nearBottom) { window.scrollTo(0, document.body.scrollHeight); }
    });
    source.addEventListener("update", function (event) {
      // A reply drawn again: its delivered/read badge changed.
      var data = JSON.parse(event.data);
      var shown = document.getElementById("msg-" + data.id);
      if (!shown) { return; }
      var template = document.createElement("template");
      template.innerHTML = data.html.trim();
      shown.replaceWith(template.content);
    });
    source.addEventListener("state", function (event) {
      var data = JSON.parse(event.data);
      setHandedOff(Boolean(data.handed_off), data.agent_id || "");
    });
    source.addEventListener("problem", function (event) {
      var status = document.getElementById("live-status");
      if (status) { status.textContent = JSON.parse(event.data).message; }
    });
    source.addEventListener("signed-out", function (event) {
      source.close();
      var status = document.getElementById("live-status");
      if (status) { status.textContent = JSON.parse(event.data).message; }
    });
    source.addEventListener("open", function () {
      var status = document.getElementById("live-status");
      if (status) { status.textContent = "New messages appear here as they arrive."; }
    });
  }

  function enhanceReply(form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var status = document.getElementById("agent-reply-status");
      var fields = new FormData(form);
      var body = {
        channel: fields.get("channel"),
        user_id: fields.get("user_id"),
        text: fields.get("text"),
        request_id: fields.get("request_id")
      };
      var button = form.querySelector("button");
      button.disabled = true;
      status.textContent = "Sending…";
      fetch(form.dataset.api, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrfToken() },
        body: JSON.stringify(body)
      }).then(function (response) {
        return response.json().then(function (data) { return { ok: response.ok, data: data }; });
      }).then(function (result) {
        if (result.ok) {
          status.textContent = "Sent.";
          form.elements.text.value = "";
          form.elements.request_id.value = (window.crypto && crypto.randomUUID)
            ? crypto.randomUUID().replace(/-/g, "") : String(Date.now());
        } else {
          status.textContent = "Not sent: " + (result.data.message || "error");
        }
      }).catch(function () {
        status.textContent = "Not sent: the console cannot be reached.";
      }).finally(function () {
        button.disabled = false;
        form.elements.text.focus();
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var list = document.getElementById("transcript");
    if (list) { follow(list); }
    var reply = document.getElementById("agent-reply");
    if (reply && window.fetch) { enhanceReply(reply); }
  });
})();
