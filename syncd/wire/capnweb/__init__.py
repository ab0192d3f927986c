"""Cap'n Web (npm `capnweb`) wire protocol: the codec and the message framing."""
