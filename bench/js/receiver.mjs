// A minimal js-libp2p receiver of fil/heartbeat/1.0.0: counts complete CBOR items (beats)
// on every inbound stream. Prints its multiaddr, then one JSON line per second:
// {"t": seconds since start, "beats": total so far}. Exits on SIGTERM/SIGINT.
import { node, PROTOCOL } from './common.mjs'

// Length of the complete CBOR item at buf[i..], or -1 if it is not complete yet.
// Enough for a beat (maps, arrays, strings, ints, tags, simple values); indefinite-length
// items are rejected (-2): a beat never uses them.
function itemEnd (buf, i) {
  if (i >= buf.length) return -1
  const ib = buf[i]
  const major = ib >> 5
  const info = ib & 0x1f
  let n = info
  let p = i + 1
  if (info === 24) { if (p + 1 > buf.length) return -1; n = buf[p]; p += 1 }
  else if (info === 25) { if (p + 2 > buf.length) return -1; n = (buf[p] << 8) | buf[p + 1]; p += 2 }
  else if (info === 26) { if (p + 4 > buf.length) return -1; n = ((buf[p] << 24) >>> 0) + (buf[p + 1] << 16) + (buf[p + 2] << 8) + buf[p + 3]; p += 4 }
  else if (info === 27) { if (p + 8 > buf.length) return -1; n = Number(new DataView(buf.buffer, buf.byteOffset + p, 8).getBigUint64(0)); p += 8 }
  else if (info > 27) return -2
  if (major === 2 || major === 3) return p + n <= buf.length ? p + n : -1
  if (major === 4 || major === 5) {
    const count = major === 5 ? n * 2 : n
    for (let k = 0; k < count; k++) {
      p = itemEnd(buf, p)
      if (p < 0) return p
    }
    return p
  }
  if (major === 6) return itemEnd(buf, p)
  return p // 0, 1 (ints), 7 (simple, floats)
}

let beats = 0
const start = Date.now()

async function serve ({ stream }) {
  let pending = new Uint8Array(0)
  try {
    for await (const chunk of stream.source) {
      const bytes = chunk.subarray(0)
      let buf = bytes
      if (pending.length > 0) {
        buf = new Uint8Array(pending.length + bytes.length)
        buf.set(pending, 0)
        buf.set(bytes, pending.length)
      }
      let i = 0
      for (;;) {
        const end = itemEnd(buf, i)
        if (end === -2) { stream.abort(new Error('not a beat')); return }
        if (end < 0) break
        beats += 1
        i = end
      }
      pending = buf.slice(i)
    }
    await stream.close()
  } catch {
    stream.abort(new Error('read failed'))
  }
}

const libp2p = await node(process.argv[2] ?? '/ip4/127.0.0.1/tcp/0')
await libp2p.handle(PROTOCOL, serve, { maxInboundStreams: 64, runOnLimitedConnection: false })
console.log(libp2p.getMultiaddrs()[0].toString())
const timer = setInterval(() => {
  console.log(JSON.stringify({ t: (Date.now() - start) / 1000, beats }))
}, 1000)
const stop = async () => { clearInterval(timer); await libp2p.stop(); process.exit(0) }
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
