"""A classic BPF interpreter for the few instructions ``gateway.core.synfilter`` emits, for tests.

It runs a program over an IP packet the way the kernel runs a socket filter on a TCP socket: the packet handed to
the program starts at the transport header, and loads at ``SKF_NET_OFF + n`` read byte ``n`` of the IP header.
Anything else (other opcodes, other negative offsets, a jump out of the program) raises, so a program the kernel
would reject or read differently fails here too.
"""

from __future__ import annotations

from gateway.core.synfilter import MAX_INSTRUCTIONS, SKF_NET_OFF, Instruction


class Rejected(Exception):
    """The program would not load or not run as written."""


def run(program: tuple[Instruction, ...], ip_header: bytes) -> int:
    """The filter's verdict for a packet with ``ip_header``: bytes to keep (0: drop)."""
    if not 0 < len(program) <= MAX_INSTRUCTIONS:
        raise Rejected(f"{len(program)} instructions")
    a = 0
    pc = 0
    while True:
        if not 0 <= pc < len(program):
            raise Rejected(f"jump to {pc}, outside the program")
        ins = program[pc]
        pc += 1
        if ins.code in (0x20, 0x30):  # BPF_LD | BPF_W/BPF_B | BPF_ABS
            offset = ins.k - SKF_NET_OFF
            size = 4 if ins.code == 0x20 else 1
            if not 0 <= offset <= len(ip_header) - size:
                raise Rejected(f"load at {ins.k}")
            a = int.from_bytes(ip_header[offset:offset + size], "big")
        elif ins.code == 0x74:  # BPF_ALU | BPF_RSH | BPF_K
            a = (a >> ins.k) & 0xFFFFFFFF
        elif ins.code == 0x15:  # BPF_JMP | BPF_JEQ | BPF_K
            if not (0 <= ins.jt <= 255 and 0 <= ins.jf <= 255):
                raise Rejected("jump offset out of 8 bits")
            pc += ins.jt if a == ins.k else ins.jf
        elif ins.code == 0x05:  # BPF_JMP | BPF_JA
            pc += ins.k
        elif ins.code == 0x06:  # BPF_RET | BPF_K
            return ins.k
        else:
            raise Rejected(f"opcode {ins.code:#x}")
