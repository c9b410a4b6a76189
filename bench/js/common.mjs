// Shared by receiver.mjs and sender.mjs: a js-libp2p 2.x node with Noise + Yamux over TCP.
import './polyfill.mjs'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { tcp } from '@libp2p/tcp'
import { createLibp2p } from 'libp2p'

export const PROTOCOL = 'fil/heartbeat/1.0.0'

export async function node (listen) {
  return await createLibp2p({
    addresses: { listen: listen ? [listen] : [] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    connectionManager: {
      maxConnections: 100000,
      maxIncomingPendingConnections: 10000,
      inboundConnectionThreshold: 100000
    },
    connectionMonitor: { enabled: false }
  })
}
