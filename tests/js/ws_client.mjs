// Node's `ws` library (pinned in package.json) on the gateway's /v1/ws, strict about
// what the server writes (it fails a connection on any RFC 6455 violation).
//
// Run by tests/integration/test_gateway_ws_protocol.py; prints one JSON object per line.
//
//   node ws_client.mjs <ws-url>        (the token in WS_TOKEN, never on a command line)
//
// Steps: a call; a call sent in three fragments; a ping with a payload (its pong);
// a message over maxMessageBytes (WS_TOO_BIG bytes: the gateway closes with 1009);
// else the client closes with 1000 and reports the close handshake.

import WebSocket from 'ws'

const url = process.argv[2]
const tooBig = Number(process.env.WS_TOO_BIG ?? 0)
const print = (event) => process.stdout.write(JSON.stringify(event) + '\n')
setTimeout(() => { print({ event: 'timeout' }); process.exit(1) }, 20000).unref()

const ws = new WebSocket(url, { headers: { Authorization: `Bearer ${process.env.WS_TOKEN}` } })
const answered = new Set()
ws.on('error', (err) => print({ event: 'error', message: String(err.message) }))
ws.on('close', (code, reason) => { print({ event: 'close', code, reason: reason.toString() }); process.exit(0) })
ws.on('pong', (data) => {
  print({ event: 'pong', payload: data.toString() })
  if (tooBig) ws.send('x'.repeat(tooBig))
  else ws.close(1000, 'done')
})
ws.on('message', (data) => {
  const msg = JSON.parse(data.toString())
  if (msg.id === undefined) return
  answered.add(msg.id)
  print({ event: 'answer', id: msg.id, result: msg.result })
  if (answered.size === 2) ws.ping('node-ping')
})
ws.on('open', () => {
  ws.send(JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'NoOp', params: {} }))
  const parts = ['{"jsonrpc":"2.0","id":2,', '"method":"NoOp",', '"params":{}}']
  parts.forEach((part, i) => ws.send(part, { fin: i === parts.length - 1 }))
})
