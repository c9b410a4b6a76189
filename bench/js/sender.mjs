// Flooding sender of fil/heartbeat/1.0.0: N connections (one js-libp2p node, and so one
// peer id, per connection), each writing one valid CBOR beat per write as fast as the
// stream takes it, for a duration.
//   node sender.mjs <multiaddr> <connections> <seconds> <beat hex>
// Prints one JSON line at the end: {"written": beats written, "connections": connected}.
import { multiaddr } from '@multiformats/multiaddr'
import { node, PROTOCOL } from './common.mjs'

const [target, connections, seconds, beatHex] = process.argv.slice(2)
const beat = Uint8Array.from(Buffer.from(beatHex, 'hex'))
const until = Date.now() + Number(seconds) * 1000
let written = 0
let connected = 0

async function flood () {
  const libp2p = await node(null)
  try {
    const stream = await libp2p.dialProtocol(multiaddr(target), PROTOCOL)
    connected += 1
    await stream.sink((async function * () {
      while (Date.now() < until) {
        written += 1
        yield beat
        // Yield to the event loop now and then so every connection gets its turn.
        if (written % 64 === 0) await new Promise(resolve => setImmediate(resolve))
      }
    })())
    await stream.close().catch(() => {})
  } catch (err) {
    console.error(`sender: ${err.message}`)
  } finally {
    await libp2p.stop()
  }
}

await Promise.all(Array.from({ length: Number(connections) }, flood))
console.log(JSON.stringify({ written, connected }))
process.exit(0)
