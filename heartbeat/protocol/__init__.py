"""The heartbeat protocol, shared by both programs: the beat, its codecs and the stream decoder,
tipset keys and Filecoin addresses. Pure: no I/O, no clock, no libp2p."""
