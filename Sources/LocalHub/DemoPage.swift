/// The page the hub serves at `/`: connects through `/negotiate`, joins a group, shows each
/// message as it arrives and sends to the group. `/?hub=chat&group=demo` picks hub and group.
enum DemoPage {
    static let html = #"""
        <!doctype html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <title>wps-bridge hub</title>
        <style>
          body { font: 15px/1.4 system-ui, sans-serif; margin: 2rem auto; max-width: 50rem; padding: 0 1rem; color: #222; }
          h1 { font-size: 1.3rem; }
          #status { color: #666; }
          #messages { list-style: none; padding: 0; border-top: 1px solid #ddd; }
          #messages li { padding: .4rem 0; border-bottom: 1px solid #eee; }
          .meta { color: #888; font-size: .8rem; margin-right: .5rem; }
          .data { font-family: ui-monospace, monospace; white-space: pre-wrap; word-break: break-all; }
          form { display: flex; gap: .5rem; margin: 1rem 0; }
          input { flex: 1; padding: .4rem; }
        </style>
        </head>
        <body>
        <h1>Hub <code id="hub"></code>, group <code id="group"></code></h1>
        <p id="status">connecting…</p>
        <form id="send"><input id="text" placeholder="Send to the group" autocomplete="off"><button>Send</button></form>
        <ul id="messages"></ul>
        <script>
        const params = new URLSearchParams(location.search);
        const hub = params.get("hub") || "chat";
        const group = params.get("group") || "demo";
        document.getElementById("hub").textContent = hub;
        document.getElementById("group").textContent = group;
        const status = document.getElementById("status");
        const list = document.getElementById("messages");
        let socket = null, ackId = 0;

        function show(from, dataType, data) {
          const li = document.createElement("li");
          li.className = "message";
          li.dataset.type = dataType;
          const meta = document.createElement("span");
          meta.className = "meta";
          meta.textContent = `${from} · ${dataType}`;
          const body = document.createElement("span");
          body.className = "data";
          body.textContent = dataType === "json" ? JSON.stringify(data) : data;
          li.append(meta, body);
          list.prepend(li);
        }

        async function connect() {
          const user = "web-" + Math.random().toString(36).slice(2, 8);
          const res = await fetch(`/negotiate?hub=${encodeURIComponent(hub)}&group=${encodeURIComponent(group)}&userId=${user}`);
          if (!res.ok) { status.textContent = "negotiate failed: " + res.status; return; }
          const { url } = await res.json();
          socket = new WebSocket(url, "json.webpubsub.azure.v1");
          socket.onmessage = (event) => {
            const m = JSON.parse(event.data);
            if (m.type === "system" && m.event === "connected") {
              socket.send(JSON.stringify({ type: "joinGroup", group, ackId: ++ackId }));
              status.textContent = `connected as ${m.userId || "anonymous"} (${m.connectionId})`;
            } else if (m.type === "ack" && !m.success) {
              status.textContent = `error: ${m.error.name}: ${m.error.message}`;
            } else if (m.type === "ack") {
              status.dataset.joined = "true";
              status.textContent = status.textContent.replace(/ · joined.*$/, "") + ` · joined ${group}`;
            } else if (m.type === "message") {
              const from = m.from === "group" ? `group ${m.group}${m.fromUserId ? " from " + m.fromUserId : ""}` : "server";
              if (m.dataType === "json" && Array.isArray(m.data) && m.metadata && m.metadata.batch) {
                // A batch of the bridge (route batch:): one array, each element a message of its own.
                m.data.forEach((item, i) => show(`${from} · batch ${i + 1}/${m.data.length}`, typeof item === "string" ? "text" : "json", item));
              } else {
                show(from, m.dataType, m.data);
              }
            } else if (m.type === "system" && m.event === "disconnected") {
              status.textContent = "disconnected: " + m.message;
            }
          };
          socket.onclose = () => { status.textContent += " (closed)"; };
        }

        document.getElementById("send").onsubmit = (e) => {
          e.preventDefault();
          const input = document.getElementById("text");
          if (!socket || socket.readyState !== 1 || !input.value) return;
          socket.send(JSON.stringify({ type: "sendToGroup", group, dataType: "text", data: input.value, ackId: ++ackId }));
          input.value = "";
        };
        connect();
        </script>
        </body>
        </html>
        """#
}
