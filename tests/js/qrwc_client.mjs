// Drives the vendor's QRWC SDK (@q-sys/qrwc) against a gateway's /qrc-public-api/v0.
//
// Run by tests/integration/test_gateway_qrwc.py, which starts the simulator and the
// gateway and asserts on what this prints: one JSON object per line on stdout.
//
//   node qrwc_client.mjs <ws-url>
//
// Settings come from environment variables (tokens never appear on a command line):
//   QRWC_AUTH        header | apikey | logon
//   QRWC_TOKEN       the gateway token
//   QRWC_USER        the subject name (logon only)
//   QRWC_WRITE       JSON {component, control, value}: a write that must succeed
//   QRWC_DENIED      JSON {component, control, value}: a write the policy refuses
//   QRWC_WATCH       JSON {component, control, value}: wait until an update shows this value
//                    (the test changes it through another client after "ready")
//   QRWC_COPY        JSON {from: {component, control}, to: {component, control}}:
//                    `to.update(from.state)`, the SDK README's way of copying a control
//                    (sends the whole control state: Type, ValueMin, ...)
//   QRWC_SUMMARY     1: print only each component's control count on "connected"
//   QRWC_TIMEOUT_MS  overall limit (default 20000)
//
// Node 20 has no global WebSocket, and the SDK's own types name the `ws` package's
// WebSocket for Node, so `ws` (pinned in package.json) provides the socket.

import { Qrwc } from '@q-sys/qrwc'
import WebSocket from 'ws'

const url = process.argv[2]
const auth = process.env.QRWC_AUTH ?? 'header'
const token = process.env.QRWC_TOKEN ?? ''
const user = process.env.QRWC_USER ?? ''
const parse = (name) => (process.env[name] ? JSON.parse(process.env[name]) : null)
const write = parse('QRWC_WRITE')
const denied = parse('QRWC_DENIED')
const watch = parse('QRWC_WATCH')
const copy = parse('QRWC_COPY')
const summary = process.env.QRWC_SUMMARY === '1'
const limit = Number(process.env.QRWC_TIMEOUT_MS ?? 20000)

const emit = (event, data = {}) => process.stdout.write(JSON.stringify({ event, ...data }) + '\n')
const errors = []
const text = (e) => (e instanceof Error ? e.message : String(e))

const timer = setTimeout(() => {
  emit('timeout', { errors })
  process.exit(3)
}, limit)

function openSocket() {
  const headers = auth === 'header' ? { Authorization: `Bearer ${token}` } : {}
  const socket = new WebSocket(url, { headers })
  if (auth === 'apikey') {
    // The published SDK (0.5.0-beta) has no apiKey option; its 1.0 line sends the key as a
    // top-level `apiKey` member of every request. Add it the same way to what the SDK sends.
    const send = socket.send.bind(socket)
    socket.send = (data, ...rest) => send(JSON.stringify({ apiKey: token, ...JSON.parse(data) }), ...rest)
  }
  return socket
}

async function logon(socket) {
  // A first Logon on the raw socket, answered before the SDK takes the socket over.
  await new Promise((resolve, reject) => {
    socket.once('open', resolve)
    socket.once('error', reject)
  })
  const answer = new Promise((resolve) => {
    const onMessage = (data) => {
      const message = JSON.parse(data.toString())
      if (message.id !== 'logon') return // EngineStatus is pushed on logon
      socket.off('message', onMessage)
      resolve(message)
    }
    socket.on('message', onMessage)
  })
  socket.send(JSON.stringify({ jsonrpc: '2.0', id: 'logon', method: 'Logon', params: { User: user, Password: token } }))
  const reply = await answer
  emit('logon', { ok: reply.result === true, error: reply.error ?? null })
  if (reply.result !== true) throw new Error('Logon refused')
}

function waitFor(control, value) {
  return new Promise((resolve) => {
    if (control.state.Value === value) return resolve(control.state)
    control.on('update', (state) => {
      if (state.Value === value) resolve(state)
    })
  })
}

async function main() {
  const socket = openSocket()
  if (auth === 'logon') await logon(socket)
  const qrwc = await Qrwc.createQrwc({
    socket,
    pollingInterval: 100,
    timeout: 5000,
    logger: { error: (e) => errors.push(text(e)) }
  })
  qrwc.on('error', (e) => errors.push(text(e)))
  const components = {}
  for (const [name, component] of Object.entries(qrwc.components)) {
    if (summary) {
      components[name] = Object.keys(component.controls).length
      continue
    }
    components[name] = Object.fromEntries(
      Object.entries(component.controls).map(([c, control]) => [
        c,
        {
          Type: control.state.Type,
          Direction: control.state.Direction,
          Value: control.state.Value,
          ValueMin: control.state.ValueMin,
          ValueMax: control.state.ValueMax
        }
      ])
    )
  }
  emit('connected', { engineStatus: qrwc.engineStatus, components })

  if (write) {
    const control = qrwc.components[write.component]?.controls[write.control]
    if (!control) throw new Error(`no control ${write.component}.${write.control}`)
    const before = errors.length
    const state = await control.update(write.value)
    emit('write', { state, errors: errors.slice(before) })
  }

  if (copy) {
    const source = qrwc.components[copy.from.component]?.controls[copy.from.control]
    const target = qrwc.components[copy.to.component]?.controls[copy.to.control]
    if (!source || !target) throw new Error('no control to copy from or to')
    const before = errors.length
    const refused = []
    target.on('error', (e) => refused.push(text(e)))
    const state = await target.update(source.state)
    emit('copy', { sent: source.state, state, errors: [...errors.slice(before), ...refused] })
  }

  if (denied) {
    const control = qrwc.components[denied.component]?.controls[denied.control]
    if (!control) throw new Error(`no control ${denied.component}.${denied.control}`)
    const refused = []
    control.on('error', (e) => refused.push(text(e)))
    const state = await control.update(denied.value)
    emit('denied', { state, errors: refused })
  }

  if (watch) {
    const control = qrwc.components[watch.component]?.controls[watch.control]
    if (!control) throw new Error(`no control ${watch.component}.${watch.control}`)
    const seen = waitFor(control, watch.value)
    emit('ready')
    emit('update', { state: await seen })
  }

  qrwc.close()
  clearTimeout(timer)
  emit('done', { errors })
}

main().catch((e) => {
  emit('failed', { error: text(e), errors })
  process.exit(2)
})
