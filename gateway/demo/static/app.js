// The todo page: sends commands, and renders only what the stream says.
//
// Commands are fire-and-forget POSTs answered 204; the page never edits the
// list itself. Every change (ours or another user's) comes back as a complete
// HTML snapshot on the SSE stream and replaces the list wholesale, so all
// open pages converge on the same state.
'use strict';

(() => {
  const form = document.getElementById('add-form');
  const input = document.getElementById('new-todo');
  const list = document.getElementById('todos');
  const status = document.getElementById('status');
  const errorBox = document.getElementById('error');
  const errorText = document.getElementById('error-text');
  const errorDismiss = document.getElementById('error-dismiss');

  const STATUS_TEXT = {
    connecting: 'Connecting…',
    connected: 'Live',
    reconnecting: 'Reconnecting…',
  };

  function setStatus(state) {
    if (status.dataset.state === state) return;
    status.dataset.state = state;
    status.textContent = STATUS_TEXT[state];
  }

  function showError(message) {
    errorText.textContent = message;
    errorBox.hidden = false;
  }

  function hideError() {
    errorBox.hidden = true;
    errorText.textContent = '';
  }

  // POST one command. Resolves true on 2xx; otherwise shows why and
  // resolves false. Never touches the list: the stream does that.
  async function send(path, body) {
    let response;
    try {
      response = await fetch(path, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify(body),
      });
    } catch {
      showError('Network error: the command was not sent. Check your connection and try again.');
      return false;
    }
    if (response.ok) {
      hideError();
      return true;
    }
    let message = '';
    try {
      const data = await response.json();
      message = [data.error, data.detail].filter((s) => typeof s === 'string' && s).join(': ');
    } catch {
      // Not JSON; fall back to the status line below.
    }
    showError(message || `The server refused the command (HTTP ${response.status}).`);
    return false;
  }

  // Swap in a new snapshot without losing the keyboard user's place: refocus
  // the control with the same data-focus-key, or, if its item is gone, the
  // same kind of control on the item now at that position.
  function render(html) {
    const active = document.activeElement;
    const inList = active instanceof HTMLElement && list.contains(active);
    const key = inList ? active.dataset.focusKey : undefined;
    const action = inList ? active.dataset.action : undefined;
    const items = [...list.querySelectorAll('li[data-id]')];
    const index = inList ? items.indexOf(active.closest('li[data-id]')) : -1;

    list.innerHTML = html;
    if (!inList) return;

    let target = key ? list.querySelector(`[data-focus-key="${CSS.escape(key)}"]`) : null;
    if (!target && index >= 0 && action) {
      const rows = list.querySelectorAll('li[data-id]');
      const row = rows[Math.min(index, rows.length - 1)];
      target = row ? row.querySelector(`[data-action="${CSS.escape(action)}"]`) : null;
    }
    if (target && !target.disabled) target.focus();
    else input.focus();
  }

  // The stream. EventSource retries by itself after a dropped connection; if
  // it gives up (readyState CLOSED, e.g. after an HTTP error) we start over.
  let source = null;
  let retryDelay = 1000;

  function connect() {
    source = new EventSource('/todos/updates');
    source.addEventListener('open', () => {
      retryDelay = 1000;
      setStatus('connected');
    });
    source.addEventListener('message', (event) => {
      setStatus('connected');
      render(event.data);
      document.body.dataset.version = event.lastEventId;
    });
    source.addEventListener('error', () => {
      setStatus('reconnecting');
      if (source.readyState === EventSource.CLOSED) {
        source.close();
        setTimeout(connect, retryDelay);
        retryDelay = Math.min(retryDelay * 2, 30000);
      }
    });
  }

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const sent = input.value;
    const text = sent.trim();
    if (!text) {
      input.focus();
      return;
    }
    // Clear only if the user has not typed on while the request was out.
    if ((await send('/todos/add', { text })) && input.value === sent) {
      input.value = '';
    }
  });

  // One listener for every item, since the items are replaced on each event.
  // Checkbox clicks (mouse or Space) are cancelled so the box keeps showing
  // the server's state until the stream says otherwise.
  list.addEventListener('click', (event) => {
    const el = event.target instanceof Element ? event.target.closest('[data-action]') : null;
    if (!el || !list.contains(el)) return;
    const id = Number(el.dataset.id);
    switch (el.dataset.action) {
      case 'toggle':
        event.preventDefault();
        send('/todos/toggle', { id });
        break;
      case 'delete':
        send('/todos/delete', { id });
        break;
      case 'clear-completed':
        send('/todos/clear-completed', {});
        break;
    }
  });

  errorDismiss.addEventListener('click', () => {
    hideError();
    input.focus();
  });
  document.addEventListener('keydown', (event) => {
    if (event.key === 'Escape' && !errorBox.hidden) hideError();
  });

  connect();
})();
