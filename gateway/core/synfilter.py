"""A classic BPF socket filter that makes the kernel drop every packet from a set of source addresses.

Why: the penalty box (``gateway.core.connections.PenaltyBox``) refuses an abusive address's new connections, but
refusing in the accept loop still costs the process an ``accept()``, a ``close()`` and a turn of the event loop per
attempt, and a client that reconnects the moment it is closed makes thousands of attempts a second (an HTTP/2
Rapid Reset client did ~7,000 a second on loopback, a quarter of the gateway's busy time). Attached to a listening
TCP socket (``SO_ATTACH_FILTER``), this program drops the address's SYNs before the kernel answers them: no
connection is made, the client waits for its SYN retransmits (1 s, 3 s, 7 s, ...), and the process sees nothing.

This module only builds the program (bytes the kernel reads as ``struct sock_filter[]``); attaching it is the I/O
layer's (``gateway.web.hypercorn.syn_filter``). The program reads the IP header through the kernel's ``SKF_NET_OFF``
offsets (a socket filter's packet starts at the transport header), so one program serves IPv4 listeners and
dual-stack IPv6 listeners, whose IPv4 clients arrive as IPv4 packets: an IPv4-mapped address (``::ffff:a.b.c.d``)
is matched as the IPv4 address it maps.

Size: the kernel accepts at most ``MAX_INSTRUCTIONS`` (4,096) instructions; an IPv4 address costs two and an IPv6
address nine, so at most about 2,000 IPv4 or 450 IPv6 addresses fit. ``program`` keeps the first ones given that
fit (the caller lists the newest first) and says how many it left out; those are still refused at accept.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass

MAX_INSTRUCTIONS = 4096  # BPF_MAXINSNS

# Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
_LD_W_ABS = 0x00 | 0x00 | 0x20  # BPF_LD | BPF_W | BPF_ABS
_LD_B_ABS = 0x00 | 0x10 | 0x20  # BPF_LD | BPF_B | BPF_ABS
_RSH_K = 0x04 | 0x70 | 0x00  # BPF_ALU | BPF_RSH | BPF_K
_JEQ_K = 0x05 | 0x10 | 0x00  # BPF_JMP | BPF_JEQ | BPF_K
_JA = 0x05 | 0x00  # BPF_JMP | BPF_JA
_RET_K = 0x06 | 0x00  # BPF_RET | BPF_K
SKF_NET_OFF = -0x100000  # loads relative to the network (IP) header
KEEP = 0xFFFFFFFF  # a socket filter returns how many bytes to keep: all of them
DROP = 0

_FIXED = 9  # version load and shift, the branches, the IPv4 source load, and the three ways to keep a packet
_V4_COST = 2  # compare, drop
_V6_COST = 9  # four loads, four compares, drop


@dataclass(frozen=True)
class Instruction:
    """One ``struct sock_filter``: opcode, jump-if-true, jump-if-false (relative, 8 bits) and the constant."""

    code: int
    jt: int
    jf: int
    k: int

    def pack(self) -> bytes:
        return struct.pack("=HBBI", self.code, self.jt, self.jf, self.k & 0xFFFFFFFF)


@dataclass(frozen=True)
class Program:
    """The filter's instructions, the addresses it drops, and how many of those asked for did not fit."""

    instructions: tuple[Instruction, ...]
    dropped: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]
    left_out: int

    def pack(self) -> bytes:
        """The bytes of ``struct sock_filter[]`` in the host's byte order."""
        return b"".join(instruction.pack() for instruction in self.instructions)


def parse(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a packet from ``address`` carries in its IP header (IPv4-mapped IPv6 as IPv4); None if not an
    IP address (a unix socket's peer)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def program(addresses: Iterable[str]) -> Program:
    """A filter dropping packets from ``addresses`` (newest first: those that do not fit are the last ones)."""
    v4: list[ipaddress.IPv4Address] = []
    v6: list[ipaddress.IPv6Address] = []
    seen: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    budget = MAX_INSTRUCTIONS - _FIXED
    left_out = 0
    for text in addresses:
        if budget < _V4_COST:  # full: the rest are counted, not parsed (a box may hold 10,000)
            left_out += 1
            continue
        ip = parse(text)
        if ip is None or ip in seen:
            continue
        cost = _V4_COST if isinstance(ip, ipaddress.IPv4Address) else _V6_COST
        if cost > budget:
            left_out += 1
            continue
        budget -= cost
        seen.add(ip)
        if isinstance(ip, ipaddress.IPv4Address):
            v4.append(ip)
        else:
            v6.append(ip)

    code: list[Instruction] = [
        Instruction(_LD_B_ABS, 0, 0, SKF_NET_OFF),  # A = first byte of the IP header
        Instruction(_RSH_K, 0, 0, 4),  # A = IP version
        Instruction(_JEQ_K, 1, 0, 4),  # IPv4: skip the jump to the IPv6 part
        Instruction(_JA, 0, 0, 2 + _V4_COST * len(v4)),  # to the IPv6 part (past the load, compares and accept)
        Instruction(_LD_W_ABS, 0, 0, SKF_NET_OFF + 12),  # A = IPv4 source address
    ]
    for ip in v4:
        code += [Instruction(_JEQ_K, 0, 1, int(ip)), Instruction(_RET_K, 0, 0, DROP)]
    code.append(Instruction(_RET_K, 0, 0, KEEP))
    # The IPv6 part (A still holds the version): anything else than IPv6 is kept as it is.
    code += [Instruction(_JEQ_K, 1, 0, 6), Instruction(_RET_K, 0, 0, KEEP)]
    for ip in v6:
        words = struct.unpack("!4I", ip.packed)
        for index, word in enumerate(words):
            left = 3 - index  # compares after this one
            code += [Instruction(_LD_W_ABS, 0, 0, SKF_NET_OFF + 8 + 4 * index),
                     Instruction(_JEQ_K, 0, 2 * left + 1, word)]  # no match: past the rest and the drop
        code.append(Instruction(_RET_K, 0, 0, DROP))
    code.append(Instruction(_RET_K, 0, 0, KEEP))
    return Program(tuple(code), (*v4, *v6), left_out)
