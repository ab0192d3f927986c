"""What both ends of a connection speak: the capnweb protocol, the A2A mapping of SyncData,
the key header. The transports (client side) and the receiver both import it, never each
other."""
