# --8<-- [start:theory]
"""io_uring from the standard library: three system calls through ctypes, two rings shared through mmap.

Theory of operation. An io_uring is a pair of ring buffers that the kernel and this process share. We write a
64-byte submission queue entry (SQE) per operation ("receive on this socket", "send these bytes"), each tagged
with a 64-bit `user_data`, then move the submission ring's tail; the kernel consumes entries from its head.
When an operation is done, the kernel writes a 16-byte completion queue entry (CQE): our `user_data` back, a
result (a count, or -errno) and flags, and moves the completion ring's tail; we read entries from its head and
move the head to give the slots back. One system call, io_uring_enter, both hands over every new SQE and
waits for completions: a loop turn costs one call however many operations it starts and finishes.

    submission ring (we produce, kernel consumes)     completion ring (kernel produces, we consume)
    [ head ... SQEs we wrote ... tail ]                [ head ... CQEs to read ... tail ]
                  kernel moves head ↑ we move tail       we move head ↑ kernel moves tail

The rules the two sides keep (what liburing does with store-release and load-acquire on the indexes): write a
whole SQE, then publish the tail; read the CQ tail, copy the CQEs out, then publish the head. On x86-64 the
CPU keeps stores in order and loads in order, and every store below is a separate C call, so plain stores
are enough. That is true of x86-64 only: on arm64 it would need real barriers, so we refuse other machines.

Multishot operations post many CQEs for one SQE (flag F_MORE: "more to come"); a CQE without it ends the
operation, which must be submitted again if still wanted. A multishot receive picks its memory from a
*provided buffer ring* that we register (BufferRing): the CQE names the buffer id, we copy the bytes out and
give the buffer back. The one accepted tradeoff: every offset comes from the kernel at set-up, but the
opcodes, flags and struct layouts are written here from the kernel's UAPI header (linux/io_uring.h), x86-64.
"""
# --8<-- [end:theory]

import ctypes
import errno
import mmap
import os
import platform
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

# --8<-- [start:constants]
# System call numbers (x86-64) and the constants we use, from include/uapi/linux/io_uring.h.
SYS_IO_URING_SETUP, SYS_IO_URING_ENTER, SYS_IO_URING_REGISTER = 425, 426, 427
OP_NOP, OP_POLL_ADD, OP_ACCEPT, OP_ASYNC_CANCEL, OP_CLOSE = 0, 6, 13, 14, 19
OP_SEND, OP_RECV = 26, 27
SETUP_CQSIZE, SETUP_R_DISABLED, SETUP_SUBMIT_ALL = 1 << 3, 1 << 6, 1 << 7
SETUP_SINGLE_ISSUER, SETUP_DEFER_TASKRUN = 1 << 12, 1 << 13
ENTER_GETEVENTS, ENTER_EXT_ARG = 1 << 0, 1 << 3
SQE_IO_HARDLINK, SQE_BUFFER_SELECT, SQE_CQE_SKIP_SUCCESS = 1 << 3, 1 << 5, 1 << 6
CQE_F_BUFFER, CQE_F_MORE = 1 << 0, 1 << 1
CQE_BUFFER_SHIFT = 16  # a CQE's buffer id is in the high 16 bits of its flags
RECV_MULTISHOT = 1 << 1  # in sqe.ioprio, for OP_RECV
ACCEPT_MULTISHOT = 1 << 0  # in sqe.ioprio, for OP_ACCEPT
ASYNC_CANCEL_ALL, ASYNC_CANCEL_FD = 1 << 0, 1 << 1  # in sqe.op_flags, for OP_ASYNC_CANCEL
REGISTER_PROBE, REGISTER_ENABLE_RINGS, REGISTER_PBUF_RING = 8, 12, 22
OFF_SQ_RING, OFF_SQES = 0, 0x10000000  # mmap offsets of the rings (one map for both) and of the SQE array
FEAT_SINGLE_MMAP, FEAT_EXT_ARG = 1 << 0, 1 << 8
# --8<-- [end:constants]

# --8<-- [start:layouts]
# Struct layouts: "=" is native byte order with no padding, every field at its C offset.
PARAMS = struct.Struct("=IIIIIII12x" + "IIIIIIIIQ" + "IIIIIIIIQ")  # io_uring_params, 120 bytes
SQE = struct.Struct("=BBHiQQIIQHHIQQ")  # io_uring_sqe, 64 bytes
CQE = struct.Struct("=QiI")  # io_uring_cqe: user_data, res, flags; 16 bytes
BUFFER_REGISTRATION = struct.Struct("=QIHH24x")  # io_uring_buf_reg: ring address, entries, group, flags
# io_uring_buf is 16 bytes (addr u64, len u32, bid u16, resv u16), but the ring's tail overlays the first
# entry's `resv`: writing an entry must never touch its last two bytes, so we pack only the first 14.
BUFFER_ENTRY = struct.Struct("=QIH")
BUFFER_ENTRY_SIZE = 16
TIMESPEC = struct.Struct("=qq")  # __kernel_timespec: seconds, nanoseconds
# --8<-- [end:layouts]

# `syscall` with no argtypes: ctypes then passes small ints as C ints and ctypes objects as pointers, and
# skips the conversion that argtypes would cost on every call (it doubles the cost of a call here). CDLL
# releases the GIL for the call, so a loop waiting in io_uring_enter lets the other threads run.
_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc["syscall"]  # our own function object: setting attributes on it would touch no other user
_shutdown = _libc["shutdown"]

# A send takes the address of the bytes to send. In CPython, id() is the address of the object, and a bytes
# object's contents follow its fixed-size header, which is sys.getsizeof(b"") - 1 bytes (the 1 is the NUL
# that ends every bytes object): so the address costs an addition, where ctypes would cost a microsecond.
BYTES_HEADER_SIZE = sys.getsizeof(b"") - 1


def bytes_address(data: bytes) -> int:
    """The address of `data`'s contents, valid while `data` lives (bytes are immutable and never move)."""
    return id(data) + BYTES_HEADER_SIZE


def shutdown(fd: int, how: int) -> None:
    """shutdown(2) on a plain fd, made at once. Not through the ring: the kernel always hands its SHUTDOWN
    operation to a worker thread, which looks the fd up by number only when it runs; by then a close may
    have given that number to the next client, whose connection it would shut down instead (measured here:
    sends failing with EPIPE under connection churn)."""
    if _shutdown(fd, how) < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


class UringUnavailable(Exception):
    """This machine cannot run our io_uring loop; the message says why."""


def _check(result: int, what: str) -> int:
    """A raw system call's result, or an OSError with the errno it set."""
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return result


def buffer_address(buffer: mmap.mmap | bytearray) -> tuple[int, ctypes.Array[ctypes.c_char]]:
    """The address of a writable buffer, and the ctypes export that holds it in place (keep it alive: while
    it exists the buffer cannot be resized or closed, so the kernel's pointer stays good)."""
    export = (ctypes.c_char * len(buffer)).from_buffer(buffer)
    return ctypes.addressof(export), export


# --8<-- [start:ring]
class Ring:
    """One io_uring: its file descriptor, the shared rings, and the SQE preparation we need."""

    def __init__(self, entries: int, completion_entries: int, flags: int = 0) -> None:
        params = bytearray(PARAMS.size)
        struct.pack_into("=III", params, 0, entries, completion_entries, flags | SETUP_CQSIZE)
        params_buffer = (ctypes.c_char * len(params)).from_buffer(params)  # passed as a pointer
        self.fd = _check(_syscall(SYS_IO_URING_SETUP, entries, params_buffer), "io_uring_setup")
        fields = PARAMS.unpack(params)
        sq_entries, cq_entries, _flags, _cpu, _idle, self.features, _wq_fd = fields[:7]
        sq_head, sq_tail, sq_mask, _sq_ring_entries, _sq_flags, _dropped, sq_array = fields[7:14]
        cq_head, cq_tail, cq_mask, _cq_ring_entries, _overflow, cqes = fields[16:22]
        if not self.features & FEAT_SINGLE_MMAP:  # 5.4+: one map holds both rings, which is all we handle
            os.close(self.fd)
            raise UringUnavailable("the kernel lacks IORING_FEAT_SINGLE_MMAP (Linux 5.4)")
        ring_size = max(sq_array + sq_entries * 4, cqes + cq_entries * CQE.size)
        protection, sharing = mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED | mmap.MAP_POPULATE
        self._rings = mmap.mmap(self.fd, ring_size, sharing, protection, offset=OFF_SQ_RING)
        self._sqes = mmap.mmap(self.fd, sq_entries * SQE.size, sharing, protection, offset=OFF_SQES)
        # The indexes are 32-bit words of the ring map: one aligned store each, which cannot tear.
        self._words = memoryview(self._rings).cast("I")
        self._sq_head, self._sq_tail_word, self.sq_entries = sq_head // 4, sq_tail // 4, sq_entries
        self._sq_mask = self._words[sq_mask // 4]
        self._cq_head, self._cq_tail, self.cq_entries = cq_head // 4, cq_tail // 4, cq_entries
        self._cq_mask, self._cqes = self._words[cq_mask // 4], cqes
        # The SQ array maps ring slots to SQE indexes; slot i always holds SQE i, so it is written once.
        for index in range(sq_entries):
            self._words[sq_array // 4 + index] = index
        self._sq_tail = self._words[self._sq_tail_word]  # ours: the kernel sees it at the next enter
        # io_uring_enter's wait argument: no signal mask, a pointer to the timeout (io_uring_getevents_arg).
        self._timeout = (ctypes.c_char * TIMESPEC.size)()
        self._wait_argument = (ctypes.c_uint64 * 3)(0, 0, ctypes.addressof(self._timeout))
        # Its size is a size_t, 64 bits: passed as a plain int, only the low 32 bits of the register would be
        # set, and the kernel would read garbage above them (EINVAL, now and then).
        self._wait_argument_size = ctypes.c_size_t(ctypes.sizeof(self._wait_argument))

    # --8<-- [end:ring]

    # --8<-- [start:prepare]
    def _push(  # noqa: PLR0917 (the SQE's fields, in their order)
        self,
        opcode: int,
        sqe_flags: int,
        ioprio: int,
        fd: int,
        offset: int,
        address: int,
        length: int,
        op_flags: int,
        user_data: int,
        buffer_group: int = 0,
    ) -> None:
        """Write one whole SQE into the next free slot. A slot is reused: a field left unwritten would keep
        the previous operation's value (a buffer group, say), so all 64 bytes are packed every time."""
        tail = self._sq_tail
        if (tail - self._words[self._sq_head]) & 0xFFFFFFFF >= self.sq_entries:
            self.submit()  # the ring is full: hand it over now, the kernel consumes every entry...
            if (tail - self._words[self._sq_head]) & 0xFFFFFFFF >= self.sq_entries:
                # ...unless it could not (EBUSY: completions wait for room): never overwrite an unread entry.
                raise OSError(errno.EBUSY, "io_uring submission ring full")
        slot = (tail & self._sq_mask) * SQE.size
        SQE.pack_into(
            self._sqes, slot, opcode, sqe_flags, ioprio, fd, offset, address, length, op_flags, user_data,
            buffer_group, 0, 0, 0, 0,
        )  # fmt: skip
        self._sq_tail = (tail + 1) & 0xFFFFFFFF  # a u32 index that wraps; Python's int would not

    def accept_multishot(self, listener_fd: int, user_data: int) -> None:
        """Accept every client from now on, one CQE each (res: the new socket, already non-blocking)."""
        self._push(OP_ACCEPT, 0, ACCEPT_MULTISHOT, listener_fd, 0, 0, 0, ACCEPT_FLAGS, user_data)

    def accept(self, listener_fd: int, user_data: int) -> None:
        """Accept one client."""
        self._push(OP_ACCEPT, 0, 0, listener_fd, 0, 0, 0, ACCEPT_FLAGS, user_data)

    def receive_multishot(self, fd: int, buffer_group: int, user_data: int) -> None:
        """Receive whatever arrives from now on, each time into a buffer the kernel picks from the group."""
        self._push(OP_RECV, SQE_BUFFER_SELECT, RECV_MULTISHOT, fd, 0, 0, 0, 0, user_data, buffer_group)

    def receive(self, fd: int, address: int, length: int, user_data: int) -> None:
        """Receive once, into memory of ours (which must stay put until the CQE)."""
        self._push(OP_RECV, 0, 0, fd, 0, address, length, 0, user_data)

    def send(self, fd: int, address: int, length: int, user_data: int, flags: int = 0) -> None:
        """Send `length` bytes from `address` (which must stay put until the CQE), with send(2)'s `flags`
        added to ours. MSG_WAITALL: the kernel retries a partial send itself, so a CQE for less than `length`
        means an error or a signal stopped it after part was sent."""
        self._push(OP_SEND, 0, 0, fd, 0, address, length, MSG_WAITALL_NOSIGNAL | flags, user_data)

    def poll(self, fd: int, events: int, user_data: int) -> None:
        """One readiness notification (select.POLLOUT, say): for what has no completion-based operation."""
        self._push(OP_POLL_ADD, 0, 0, fd, 0, 0, 0, events, user_data)

    def cancel(self, target_user_data: int, user_data: int) -> None:
        """Cancel the operation tagged `target_user_data` (it ends, -ECANCELED); no CQE unless this fails."""
        self._push(OP_ASYNC_CANCEL, SQE_CQE_SKIP_SUCCESS, 0, -1, 0, target_user_data, 0, 0, user_data)

    def cancel_all_then_close(self, fd: int, cancel_user_data: int, close_user_data: int) -> None:
        """Cancel every operation on `fd` (no CQE unless that fails), then close it: the close's CQE says the
        descriptor is gone. An armed multishot receive holds a reference to the socket: a close alone would
        leave the connection open (no FIN) until that receive ended."""
        cancel_flags = ASYNC_CANCEL_FD | ASYNC_CANCEL_ALL
        # A hard link runs the close after the cancel even when the cancel fails (nothing left to cancel).
        link = SQE_IO_HARDLINK | SQE_CQE_SKIP_SUCCESS
        self._push(OP_ASYNC_CANCEL, link, 0, fd, 0, 0, 0, cancel_flags, cancel_user_data)
        self._push(OP_CLOSE, 0, 0, fd, 0, 0, 0, 0, close_user_data)

    def nop(self, user_data: int) -> None:
        self._push(OP_NOP, 0, 0, -1, 0, 0, 0, 0, user_data)

    # --8<-- [end:prepare]

    # --8<-- [start:enter]
    def submit(self) -> None:
        """Hand the new SQEs to the kernel, without waiting."""
        self._enter(0, None)

    def submit_and_wait(self, timeout: float | None) -> None:
        """Hand the new SQEs to the kernel and wait until at least one CQE is ready, or `timeout` seconds."""
        self._enter(1, timeout)

    def _enter(self, wait_for: int, timeout: float | None) -> None:
        self._words[self._sq_tail_word] = self._sq_tail  # publish: every SQE up to it is fully written
        # The kernel's head: entries it has not consumed yet (a failed enter) are handed over again.
        pending = (self._sq_tail - self._words[self._sq_head]) & 0xFFFFFFFF
        flags, argument, size = 0, None, NO_SIZE
        if wait_for:
            flags = ENTER_GETEVENTS | ENTER_EXT_ARG
            if timeout is not None:
                whole = int(timeout)
                TIMESPEC.pack_into(self._timeout, 0, whole, int((timeout - whole) * 1e9))
                argument, size = self._wait_argument, self._wait_argument_size
            else:
                flags = ENTER_GETEVENTS
        result = _syscall(SYS_IO_URING_ENTER, self.fd, pending, wait_for, flags, argument, size)
        if result < 0:
            code = ctypes.get_errno()
            # ETIME: the timeout passed. EINTR: a signal came (its handler runs once we return). EBUSY,
            # EAGAIN: completions the CQ had no room for wait in the kernel; reaping makes room. All are fine.
            if code not in (errno.ETIME, errno.EINTR, errno.EBUSY, errno.EAGAIN):
                raise OSError(code, f"io_uring_enter: {os.strerror(code)}")

    def completions(self) -> Iterator[tuple[int, int, int]]:
        """Take every CQE ready now: (user_data, res, flags) each, in the order the kernel posted them."""
        words = self._words
        head, tail = words[self._cq_head], words[self._cq_tail]
        count = (tail - head) & 0xFFFFFFFF
        if not count:
            return iter(())
        first = self._cqes + (head & self._cq_mask) * CQE.size
        end = first + count * CQE.size
        last = self._cqes + self.cq_entries * CQE.size
        if end <= last:
            taken = self._rings[first:end]  # a copy of the entries...
        else:  # ...which wrap around the end of the ring
            taken = self._rings[first:last] + self._rings[self._cqes : self._cqes + end - last]
        words[self._cq_head] = tail  # ...made before their slots are given back to the kernel
        return CQE.iter_unpack(taken)

    # --8<-- [end:enter]

    def register(self, opcode: int, argument: ctypes.Array[ctypes.c_char] | None, count: int) -> None:
        _check(_syscall(SYS_IO_URING_REGISTER, self.fd, opcode, argument, count), "io_uring_register")

    def enable(self) -> None:
        """Start a ring made with SETUP_R_DISABLED. With SINGLE_ISSUER, the thread that calls this is the
        only one that may submit from now on: call it from the thread that will run the loop."""
        self.register(REGISTER_ENABLE_RINGS, None, 0)

    def close(self) -> None:
        """Close the ring: the kernel cancels what is still in flight and drops its references."""
        self._words.release()
        self._rings.close()
        self._sqes.close()
        os.close(self.fd)


NO_SIZE = ctypes.c_size_t(0)
ACCEPT_FLAGS = os.O_NONBLOCK | os.O_CLOEXEC  # SOCK_NONBLOCK and SOCK_CLOEXEC have these values
MSG_WAITALL_NOSIGNAL = 0x100 | 0x4000  # MSG_WAITALL | MSG_NOSIGNAL (no SIGPIPE for a vanished client)


# --8<-- [start:buffer_ring]
class BufferRing:
    """A provided-buffer ring: `count` buffers of `size` bytes that multishot receives of `group` fill.

    The ring itself is a third shared ring, of (address, length, buffer id) entries: the kernel takes an entry
    for each receive, we put it back (recycle) once we have copied the bytes out. If the ring runs dry, a
    multishot receive ends with -ENOBUFS and must be submitted again once buffers are back.
    """

    def __init__(self, ring: Ring, group: int, count: int, size: int) -> None:
        if count & (count - 1) or not 0 < count <= 32768:
            raise ValueError(f"a buffer ring holds a power of two of buffers, up to 32768, not {count}")
        self.group, self.count, self.size = group, count, size
        # Anonymous maps are page-aligned, as the kernel requires of the ring, and never move. Populated now:
        # the kernel cycles through every buffer in turn, so all of them are soon in use; counted from the
        # start, they are a fixed cost of the loop, not a cost that seems to grow with its connections.
        private = mmap.MAP_PRIVATE | mmap.MAP_POPULATE
        self._entries = mmap.mmap(-1, count * BUFFER_ENTRY_SIZE, flags=private)
        self._memory = mmap.mmap(-1, count * size, flags=private)
        self._entries_address, self._entries_export = buffer_address(self._entries)
        self._memory_address, self._memory_export = buffer_address(self._memory)
        self.view = memoryview(self._memory)
        self._tail_words = memoryview(self._entries).cast("H")  # the tail is u16 number 7 (byte offset 14)
        self._mask = count - 1
        self._tail = 0
        registration = bytearray(BUFFER_REGISTRATION.size)
        BUFFER_REGISTRATION.pack_into(registration, 0, self._entries_address, count, group, 0)
        ring.register(REGISTER_PBUF_RING, (ctypes.c_char * len(registration)).from_buffer(registration), 1)
        for buffer_id in range(count):
            self.recycle(buffer_id)
        self.publish()

    def recycle(self, buffer_id: int) -> None:
        """Give buffer `buffer_id` back (seen by the kernel at the next publish())."""
        slot = (self._tail & self._mask) * BUFFER_ENTRY_SIZE
        address = self._memory_address + buffer_id * self.size
        BUFFER_ENTRY.pack_into(self._entries, slot, address, self.size, buffer_id)
        self._tail += 1

    def publish(self) -> None:
        """Move the ring's tail past every recycled buffer: one store, after the entries are written."""
        self._tail_words[7] = self._tail & 0xFFFF

    def close(self) -> None:
        """Release our maps. Close the Ring first: the kernel may write into these buffers until then."""
        self.view.release()
        self._tail_words.release()
        del self._entries_export, self._memory_export
        self._entries.close()
        self._memory.close()


# --8<-- [end:buffer_ring]


# --8<-- [start:available]
REQUIRED_OPERATIONS = {
    "ACCEPT": OP_ACCEPT,
    "ASYNC_CANCEL": OP_ASYNC_CANCEL,
    "CLOSE": OP_CLOSE,
    "POLL_ADD": OP_POLL_ADD,
    "RECV": OP_RECV,
    "SEND": OP_SEND,
}
LOOP_FLAGS = SETUP_SINGLE_ISSUER | SETUP_DEFER_TASKRUN | SETUP_SUBMIT_ALL | SETUP_R_DISABLED


def unavailable_reason() -> str | None:  # noqa: PLR0911 (one return per reason)
    """Why this machine cannot run the io_uring loop, or None if it can (a ring made and probed)."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return f"this binding is written for Linux on x86-64, not {sys.platform} on {platform.machine()}"
    disabled = Path("/proc/sys/kernel/io_uring_disabled")
    if disabled.exists() and disabled.read_text().strip() == "2":
        return "io_uring is disabled on this machine (sysctl kernel.io_uring_disabled = 2)"
    try:
        ring = Ring(8, 16, LOOP_FLAGS)
    except OSError as error:
        if error.errno == errno.ENOSYS:
            return "the kernel has no io_uring (too old, or built without it): io_uring_setup is ENOSYS"
        if error.errno == errno.EPERM:
            return "io_uring_setup was refused (EPERM): kernel.io_uring_disabled = 1, or a seccomp profile"
        if error.errno == errno.EINVAL:
            return "the kernel lacks IORING_SETUP_DEFER_TASKRUN (Linux 6.1 or later is needed)"
        return f"io_uring_setup failed: {error.strerror}"
    except UringUnavailable as error:
        return str(error)
    try:
        try:
            supported = supported_operations(ring)
        except OSError as error:
            return f"io_uring cannot list its operations (IORING_REGISTER_PROBE): {error.strerror}"
        missing = [name for name, opcode in REQUIRED_OPERATIONS.items() if opcode not in supported]
        if missing:
            return f"the kernel lacks io_uring operations: {', '.join(missing)}"
        if not ring.features & FEAT_EXT_ARG:
            return "the kernel lacks IORING_FEAT_EXT_ARG (Linux 5.11)"
    finally:
        ring.close()
    return None


def supported_operations(ring: Ring) -> set[int]:
    """The opcodes this kernel supports (IORING_REGISTER_PROBE)."""
    probe = bytearray(16 + 256 * 8)  # a header, then one 8-byte entry per opcode
    ring.register(REGISTER_PROBE, (ctypes.c_char * len(probe)).from_buffer(probe), 256)
    operations_count = probe[1]
    supported = set()
    for index in range(operations_count):
        opcode, _reserved, flags = struct.unpack_from("=BBH", probe, 16 + index * 8)
        if flags & 1:  # IO_URING_OP_SUPPORTED
            supported.add(opcode)
    return supported


# --8<-- [end:available]
