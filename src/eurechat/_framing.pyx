# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=False
"""Compiled framing decoder: the twin of ``eurechat.fallback``.

It must behave exactly like the pure-Python ``Decoder``: same items, same
errors, raised at the same point.  Both share ``rules`` (limits and the
diagnosis of a rejected header), ``errors`` and ``message``; only the hot
loop is written twice.  This one does the work at C level: ``memchr`` for the
LF, a hand-written parse of type, length and args (no regex), ``Message``
objects allocated directly like plain tuples, the common type strings
cached, and the bytes of the input used in place -- only the incomplete tail
of a ``feed()`` is ever copied.

Whenever a header is *rejected*, the decision of which rule was broken is
left to ``rules.diagnose_header``, the reference reading of the grammar: the
error class and its message are identical to the pure twin by construction.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.ref cimport PyObject
from libc.stdlib cimport free, realloc
from libc.string cimport memchr, memcpy

from .errors import ProtocolError
from .message import Message, Oversized
from .rules import MAX_ARGS, MAX_HEADER, MAX_PAYLOAD, check_limits, diagnose_header, header_too_long

__all__ = ["Decoder"]

cdef extern from *:
    """
    /* The character classes of SPEC section 1, as lookup tables. */
    static unsigned char ec_type_char[256];
    static unsigned char ec_arg_char[256];

    static void ec_init_tables(void) {
        int c;
        for (c = 0; c < 256; c++) {
            ec_type_char[c] = (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z')
                              || (c >= 'a' && c <= 'z') || c == '_';
            ec_arg_char[c] = (c >= 0x21 && c <= 0x7e) || c >= 0x80;
        }
    }

    /* Type strings are few and repeat on every message: a small direct-mapped
       cache keyed by the raw bytes saves decoding them each time. */
    typedef struct { Py_ssize_t len; unsigned char key[32]; PyObject *s; } ec_tc_entry;
    static ec_tc_entry ec_tc[256];

    static PyObject *ec_type_str(const unsigned char *p, Py_ssize_t len) {
        /* len >= 1; mixes length, first two, middle and last bytes: enough
           to keep PING/PONG/ACK/MESSAGE/... apart; a collision only costs a decode. */
        unsigned int h = (unsigned int)len * 131u + p[0] * 31u + p[len >> 1] * 7u
                         + p[len - 1] * 3u + (len > 1 ? p[1] * 17u : 0u);
        ec_tc_entry *e;
        PyObject *s;
        e = &ec_tc[(h ^ (h >> 8)) & 255];
        if (e->s != NULL && e->len == len) {
            Py_ssize_t i = 0;               /* a few bytes: no call to memcmp */
            while (i < len && e->key[i] == p[i]) i++;
            if (i == len) {
                Py_INCREF(e->s);
                return e->s;
            }
        }
        s = PyUnicode_New(len, 127);
        if (s == NULL) return NULL;
        memcpy(PyUnicode_1BYTE_DATA(s), p, (size_t)len);
        Py_XSETREF(e->s, s);
        Py_INCREF(s);
        e->len = len;
        memcpy(e->key, p, (size_t)len);
        return s;
    }

    /* End of the arg starting at p[i]: the first byte that is not an arg
       byte (a space, a control byte or DEL), at most e.  Eight bytes at a
       time while they lie within the header line (limit = LF + 1), with the
       exact "has a byte < n" / "has a zero byte" word tests; *hi collects
       the high bits (non-ASCII seen). */
    static inline Py_ssize_t ec_scan_arg(const unsigned char *p, Py_ssize_t i, Py_ssize_t e,
                                         Py_ssize_t limit, unsigned int *hi) {
        const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
        uint64_t x, y, bad;
        int k;
    #if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        while (i + 8 <= limit) {
            memcpy(&x, p + i, 8);
            y = x ^ (ones * 0x7f);
            bad = ((x - ones * 0x21) & ~x & highs) | ((y - ones) & ~y & highs);
            if (bad) {
                k = __builtin_ctzll(bad) >> 3;           /* first bad byte (little endian) */
                if (k) *hi |= (x & highs & ((1ULL << (8 * k)) - 1)) != 0;
                i += k;
                return i < e ? i : e;
            }
            *hi |= (x & highs) != 0;
            i += 8;
        }
    #else
        (void)ones; (void)highs; (void)x; (void)y; (void)bad; (void)k; (void)limit;
    #endif
        while (i < e && ec_arg_char[p[i]]) { *hi |= p[i] >> 7; i++; }
        return i < e ? i : e;
    }

    /* An ASCII-only arg: no decoder needed. */
    static PyObject *ec_ascii_str(const unsigned char *p, Py_ssize_t len) {
        PyObject *s = PyUnicode_New(len, 127);
        if (s == NULL) return NULL;
        memcpy(PyUnicode_1BYTE_DATA(s), p, (size_t)len);
        return s;
    }

    /* Message and Oversized are tuple subclasses: allocate one with 3 slots
       through the type's tp_alloc and fill them, exactly as tuple.__new__
       does, without building an intermediate tuple. */
    /* Both items hold only str, a tuple of str, and bytes or int: they can
       never be part of a reference cycle, so they are untracked by the
       cyclic GC at once (CPython does that lazily for exact tuples, never
       for subclasses); collections then skip them. */
    static PyObject *ec_new3(PyObject *tp, PyObject *a, PyObject *b, PyObject *c) {
        /* PyObject_GC_NewVar rather than tp_alloc (PyType_GenericAlloc):
           the object comes back untracked and unzeroed, and all three slots
           are set before anything else can see it.  Valid because Message
           and Oversized add nothing to tuple's layout (__slots__ = (): no
           __dict__ or __weakref__ slot to zero) -- checked at import. */
        PyObject *o = (PyObject *)PyObject_GC_NewVar(PyTupleObject, (PyTypeObject *)tp, 3);
        if (o == NULL) return NULL;
        Py_INCREF(a); PyTuple_SET_ITEM(o, 0, a);
        Py_INCREF(b); PyTuple_SET_ITEM(o, 1, b);
        Py_INCREF(c); PyTuple_SET_ITEM(o, 2, c);
        return o;
    }

    /* The list feed() returns, with room for about `hint` items so that
       appending does not reallocate it a few times per call; it is
       always a valid list of its current size (an error can hand it over
       as `.messages` at any point). */
    static PyObject *ec_list_with_room(Py_ssize_t hint) {
        PyObject *l = PyList_New(hint);
        if (l != NULL) Py_SET_SIZE(l, 0);
        return l;
    }
    /* Append, stealing the reference to `o` (NULL: error already set). */
    static int ec_list_push(PyObject *l, PyObject *o) {
        PyListObject *L = (PyListObject *)l;
        Py_ssize_t n = Py_SIZE(L);
        int r;
        if (o == NULL) return -1;
        if (n < L->allocated) {
            PyList_SET_ITEM(l, n, o);
            Py_SET_SIZE(L, n + 1);
            return 0;
        }
        r = PyList_Append(l, o);
        Py_DECREF(o);
        return r;
    }

    static PyObject *ec_tuple_new(Py_ssize_t n) { return PyTuple_New(n); }
    static void ec_tuple_set(PyObject *t, Py_ssize_t i, PyObject *o) {
        Py_INCREF(o);
        PyTuple_SET_ITEM(t, i, o);
    }
    static void ec_untrack(PyObject *o) { PyObject_GC_UnTrack(o); }
    """
    void ec_init_tables()
    const unsigned char ec_type_char[256]
    const unsigned char ec_arg_char[256]
    object ec_type_str(const unsigned char *p, Py_ssize_t len)
    object ec_ascii_str(const unsigned char *p, Py_ssize_t len)
    Py_ssize_t ec_scan_arg(const unsigned char *p, Py_ssize_t i, Py_ssize_t e, Py_ssize_t limit,
                           unsigned int *hi)
    object ec_new3(object tp, object a, object b, object c)
    object ec_tuple_new(Py_ssize_t n)
    list ec_list_with_room(Py_ssize_t hint)
    int ec_list_push(list l, PyObject *o) except -1
    PyObject *ec_new3_raw "ec_new3"(object tp, object a, object b, object c)
    void ec_tuple_set(object t, Py_ssize_t i, object o)
    void ec_untrack(object o)
    object PyUnicode_DecodeUTF8(const char *s, Py_ssize_t size, const char *errors)
    object PyLong_FromSsize_t(Py_ssize_t v)

ec_init_tables()

cdef object _Message = Message
cdef object _Oversized = Oversized
# ec_new3 allocates them without zeroing: they must add nothing to tuple.
for _item_type in (Message, Oversized):
    if (_item_type.__basicsize__ != tuple.__basicsize__
            or _item_type.__itemsize__ != tuple.__itemsize__
            or _item_type.__dictoffset__ or _item_type.__weakrefoffset__):
        raise ImportError(f"{_item_type.__name__} must add no slot to tuple's layout")
# Larger limits than this behave the same: a length has at most 10 digits.
cdef Py_ssize_t _HUGE = 1 << 62
# Above this capacity the tail buffer is released once it empties, so one
# large message does not pin its memory for the rest of the connection.
cdef Py_ssize_t _KEEP = 1 << 16
# Arg boundaries noted by the first pass over a header (the default max_args).
cdef enum:
    _NBOUNDS = 64


cdef inline Py_ssize_t _clamp(object value):
    return _HUGE if value > _HUGE else <Py_ssize_t>value


cdef class Decoder:
    """Incremental decoder: bytes in, ``Message``/``Oversized`` items out.

    ``feed()`` returns every item completed by the bytes it was given, in
    stream order.  Limits are checked before memory is committed: a header
    fails as soon as ``max_header`` bytes pass without an LF, and the payload
    of an oversized message is discarded as it streams in, never buffered.
    After a ``ProtocolError`` the decoder stays failed: the stream can no
    longer be trusted, so every later ``feed()`` raises again.
    """

    cdef object _max_payload_obj, _max_header_obj, _max_args_obj
    cdef Py_ssize_t _max_payload, _max_header, _max_args
    cdef unsigned char *_tail     # the incomplete tail, copied out of the input
    cdef Py_ssize_t _have         # bytes in _tail
    cdef Py_ssize_t _cap          # capacity of _tail
    cdef Py_ssize_t _need         # bytes the tail must reach (0: header incomplete)
    cdef Py_ssize_t _skip         # bytes of an oversized payload still to discard
    cdef object _failed
    cdef bint _busy               # inside feed(): the tail must not be touched

    def __cinit__(self):
        self._busy = False
        self._tail = NULL
        self._have = self._cap = self._need = self._skip = 0
        self._failed = None

    def __dealloc__(self):
        free(self._tail)

    def __init__(self, max_payload=MAX_PAYLOAD, max_header=MAX_HEADER, max_args=MAX_ARGS):
        check_limits(max_payload, max_header, max_args)
        self._set_limits(max_payload, max_header, max_args)

    cdef _set_limits(self, max_payload, max_header, max_args):
        self._max_payload_obj = max_payload
        self._max_header_obj = max_header
        self._max_args_obj = max_args
        self._max_payload = _clamp(max_payload)
        self._max_header = _clamp(max_header)
        self._max_args = _clamp(max_args)

    @property
    def max_payload(self):
        """Largest payload accepted; may be changed between feeds (e.g. after login)."""
        return self._max_payload_obj

    @max_payload.setter
    def max_payload(self, value):
        check_limits(value, self._max_header_obj, self._max_args_obj)
        self._set_limits(value, self._max_header_obj, self._max_args_obj)

    @property
    def max_header(self):
        """Longest header line accepted, LF included (fixed at construction:
        a partial header already counts against it)."""
        return self._max_header_obj

    @property
    def max_args(self):
        """Most arguments accepted in one header (fixed at construction)."""
        return self._max_args_obj

    @property
    def buffered(self):
        """Bytes held for the incomplete tail (skipped bytes are never held)."""
        return self._have

    @property
    def in_frame(self):
        """True while a frame has started but not finished (for frame timeouts)."""
        return bool(self._have or self._skip)

    @property
    def failed(self):
        """True once a ``ProtocolError`` was raised: the decoder stays failed."""
        return self._failed is not None

    cdef _fail(self, err):
        self._failed = err
        self._clear_tail()
        self._need = self._skip = 0
        return err

    cdef inline void _clear_tail(self):
        self._have = 0
        if self._cap > _KEEP:
            free(self._tail)
            self._tail = NULL
            self._cap = 0

    cdef int _append_tail(self, const unsigned char *p, Py_ssize_t n) except -1:
        """Copy ``n`` bytes to the tail, growing it geometrically (never beyond
        what a known ``_need`` requires, so memory follows the bytes received)."""
        cdef Py_ssize_t want = self._have + n
        cdef Py_ssize_t cap
        cdef unsigned char *buf
        if n <= 0:
            return 0
        if want > self._cap:
            cap = self._cap * 2
            if cap < 256:
                cap = 256
            if cap < want:
                cap = want
            if self._need and cap > self._need:
                cap = self._need if self._need >= want else want
            buf = <unsigned char *>realloc(self._tail, <size_t>cap)
            if buf == NULL:
                raise MemoryError()
            self._tail = buf
            self._cap = cap
        memcpy(self._tail + self._have, p, <size_t>n)
        self._have = want
        return 0

    def feed(self, data):
        """Consume ``data``; return the items it completed, in stream order."""
        cdef Py_buffer view
        cdef bint release = False
        cdef const unsigned char *p
        cdef Py_ssize_t n
        if self._failed is not None:
            err = self._failed
            raise err.__class__(str(err))
        if type(data) is bytes:
            p = <const unsigned char *>PyBytes_AS_STRING(data)
            n = PyBytes_GET_SIZE(data)
        else:
            try:
                PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            except BufferError:  # e.g. a non-contiguous memoryview: copy it
                data = bytes(memoryview(data))
                p = <const unsigned char *>PyBytes_AS_STRING(data)
                n = PyBytes_GET_SIZE(data)
            else:
                release = True
                p = <const unsigned char *>view.buf
                n = view.len
        # Python code can run inside a feed (diagnose_header, a finalizer
        # woken by an allocation); should it feed this same decoder, the tail
        # buffer could move under our feet: refuse instead.
        if self._busy:
            if release:
                PyBuffer_Release(&view)
            raise RuntimeError("Decoder.feed() re-entered from inside a feed() call")
        self._busy = True
        try:
            return self._feed(p, n)
        finally:
            self._busy = False
            if release:
                PyBuffer_Release(&view)

    cdef list _feed(self, const unsigned char *p, Py_ssize_t n):
        # Room for one item per 32 bytes (the shared corpus averages 66).
        cdef list out = ec_list_with_room(n // 32 + 2 if n < (1 << 19) else (1 << 14))
        cdef Py_ssize_t off = 0, room, k
        cdef const unsigned char *lfp
        if self._skip:
            if n <= self._skip:
                self._skip -= n
                return out
            off = self._skip
            self._skip = 0
        if self._have:
            if not self._need:
                # The tail is a header without its LF: look for it in the new
                # bytes only, within what max_header still allows.
                room = self._max_header - self._have
                k = n - off
                lfp = <const unsigned char *>memchr(p + off, 10, <size_t>(k if k < room else room))
                if lfp == NULL:
                    if k >= room:
                        raise self._fail(header_too_long(self._max_header_obj))
                    self._append_tail(p + off, k)
                    return out
                k = lfp - (p + off) + 1
                self._append_tail(p + off, k)
                off += k
                # Judge the header: sets _need (payload to come), _skip
                # (oversized) or completes an empty-payload message.
                self._drain_c(self._tail, self._have, 1, out)
                if not self._need:
                    self._clear_tail()
            if self._need:
                k = self._need - self._have
                if k > n - off:
                    k = n - off
                self._append_tail(p + off, k)
                off += k
                if self._have < self._need:
                    return out
                self._need = 0
                self._drain_c(self._tail, self._have, 1, out)
                self._clear_tail()
            if self._skip:
                if n - off <= self._skip:
                    self._skip -= n - off
                    return out
                off += self._skip
                self._skip = 0
        k = self._drain_c(p + off, n - off, -1, out)
        off += k
        if off < n:
            self._append_tail(p + off, n - off)
        return out

    def _drain(self, buf, Py_ssize_t limit):
        """Decode up to ``limit`` items (all if < 0) from ``buf``; return them
        and the offset of the first byte not consumed.  Sets ``_need`` when a
        payload is incomplete and ``_skip`` when an oversized one runs past
        the end of ``buf``."""
        cdef Py_buffer view
        cdef list out = []
        cdef Py_ssize_t pos
        if self._busy:
            raise RuntimeError("Decoder._drain() re-entered from inside a feed() call")
        PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
        self._busy = True
        try:
            pos = self._drain_c(<const unsigned char *>view.buf, view.len, limit, out)
        finally:
            self._busy = False
            PyBuffer_Release(&view)
        return out, pos

    cdef _reject(self, const unsigned char *p, Py_ssize_t n, list out):
        err = diagnose_header(PyBytes_FromStringAndSize(<const char *>p, n), self._max_args_obj)
        err.messages = out
        return self._fail(err)

    cdef Py_ssize_t _drain_c(self, const unsigned char *p, Py_ssize_t n, Py_ssize_t limit,
                             list out) except -1:
        cdef Py_ssize_t pos = 0, lf, q, ds, e, i, a0, nargs, start, end, k, j
        cdef Py_ssize_t max_header = self._max_header
        cdef Py_ssize_t max_args = self._max_args
        cdef Py_ssize_t max_payload = self._max_payload
        cdef Py_ssize_t length
        cdef const unsigned char *lfp
        cdef unsigned int hi
        cdef Py_ssize_t bounds[2 * _NBOUNDS]
        cdef object typ, args, s
        while pos < n and limit != 0:
            k = n - pos
            lfp = <const unsigned char *>memchr(p + pos, 10, <size_t>(k if k < max_header else max_header))
            if lfp == NULL:
                if k >= max_header:
                    raise self._fail(header_too_long(self._max_header_obj, out))
                break
            lf = lfp - p
            # type: 1-32 of [A-Za-z0-9_], then one space
            q = pos
            while q < lf and ec_type_char[p[q]]:
                q += 1
            if q == pos or q - pos > 32 or q == lf or p[q] != 32:
                raise self._reject(p + pos, lf - pos, out)
            ds = q + 1
            # length: 1-10 ASCII digits; an 11th digit is rejected unread
            q = ds
            length = 0
            while q < lf and <unsigned char>(p[q] - 48) <= 9:
                length = length * 10 + (p[q] - 48)
                q += 1
                if q - ds > 10:
                    raise self._reject(p + pos, lf - pos, out)
            if q == ds:
                raise self._reject(p + pos, lf - pos, out)
            # tolerated: trailing spaces and one CR before the LF
            e = lf
            if e > q and p[e - 1] == 13:
                e -= 1
            while e > q and p[e - 1] == 32:
                e -= 1
            # args: (SP 1*argchar)*
            # One pass validates the args and notes where the first
            # _NBOUNDS of them are; more than that (a max_args above the
            # default) are found again by a second pass.
            nargs = 0
            hi = 0
            i = q
            while i < e:
                if p[i] != 32:
                    raise self._reject(p + pos, lf - pos, out)
                i += 1
                a0 = i
                i = ec_scan_arg(p, i, e, lf + 1, &hi)
                if i == a0:
                    raise self._reject(p + pos, lf - pos, out)
                if nargs < _NBOUNDS:
                    bounds[2 * nargs] = a0
                    bounds[2 * nargs + 1] = i
                nargs += 1
            if nargs > max_args:
                raise self._reject(p + pos, lf - pos, out)
            typ = ec_type_str(p + pos, ds - 1 - pos)
            if nargs == 0:
                args = ()
            else:
                args = ec_tuple_new(nargs)
                if nargs > _NBOUNDS:
                    i = bounds[2 * _NBOUNDS - 1] + 1
                for j in range(nargs):
                    if j < _NBOUNDS:
                        a0 = bounds[2 * j]
                        k = bounds[2 * j + 1]
                    else:
                        a0 = i
                        while i < e and p[i] != 32:
                            i += 1
                        k = i
                        i += 1
                    if not hi:
                        s = ec_ascii_str(p + a0, k - a0)
                    else:
                        try:
                            s = PyUnicode_DecodeUTF8(<const char *>p + a0, k - a0, NULL)
                        except UnicodeDecodeError:
                            raise self._reject(p + pos, lf - pos, out)
                    ec_tuple_set(args, j, s)
                ec_untrack(args)
            start = lf + 1
            end = start + length
            if length > max_payload:
                ec_list_push(out, ec_new3_raw(_Oversized, typ, args, PyLong_FromSsize_t(length)))
                limit -= 1
                if end > n:
                    self._skip = end - n
                    return n
                pos = end
                continue
            if end > n:
                self._need = end - pos
                break
            ec_list_push(out, ec_new3_raw(_Message, typ, args,
                                          PyBytes_FromStringAndSize(<const char *>p + start, length)))
            limit -= 1
            pos = end
        return pos
