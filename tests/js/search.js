// Runs dicomweb-client (the JavaScript DICOMweb client OHIF uses) searches against a live server.
// Usage: node search.js '<json>' where json is {"url": "<base URL>", "calls": [{"name", "method",
// "options"}]}. Prints one JSON array: per call {"name", "ok": true, "result"} or {"name", "ok": false,
// "status", "error"}. tests/test_js_client.py starts the server and checks what comes back.
'use strict';

// The client uses XMLHttpRequest, which Node does not have: xhr2 provides it.
global.XMLHttpRequest = require('xhr2');
const { api } = require('dicomweb-client');

async function main() {
  const spec = JSON.parse(process.argv[2]);
  const client = new api.DICOMwebClient({ url: spec.url });
  const out = [];
  for (const call of spec.calls) {
    try {
      const result = await client[call.method](call.options || {});
      out.push({ name: call.name, ok: true, result });
    } catch (error) {
      out.push({ name: call.name, ok: false, status: error.status || null, error: String(error.message || error) });
    }
  }
  process.stdout.write(JSON.stringify(out));
}

main().catch((error) => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(1);
});
