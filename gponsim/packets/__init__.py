"""The packet level: what travels on the wire, layer by layer.

``gponsim analyze FILE --packets`` lists every packet of a capture — TCP
flags, relative sequence and acknowledgment numbers, payload length, window
— with what it carries (the Steps whose bytes it holds, the TLS records that
end in it) and what a student should notice about it; ``--packet N
--layers`` opens one packet layer by layer, as Packet Tracer's PDU view does.

- :mod:`.facts`: what the analyzer (the fast path, :mod:`gponsim.capture`)
  learned about each packet: its connection, its Steps, its TLS records;
- :mod:`.flows`: per-connection TCP bookkeeping (relative numbers as
  Wireshark shows them, window scaling, retransmissions, duplicate ACKs,
  zero windows, delayed ACKs);
- :mod:`.headers`: the IP and TCP headers of plain packets, read without Scapy (a
  thousand times quicker), with the values Scapy gives;
- :mod:`.dissect`: Scapy's layers (``scapy.layers.l2``, ``inet``, ``inet6``,
  ``tls``), imported only when a packet is dissected (Scapy takes about half
  a second to import; ``gponsim --help`` stays instant);
- :mod:`.view`: the rows, their notes (es/en, ``notes.toml``), text and JSON;
- :mod:`.layers`: one packet, every layer's fields explained
  (``fields.toml``), and a hexdump with each layer's bytes marked;
- :mod:`.sniff`: live capture with Scapy's sniffer and a kernel BPF filter.
"""
