/*
 * _loopmon_speedups: the Monitor's hot path and event ring, in C.
 *
 * Why C
 * -----
 * The backend calls the recorder once per op transition, on the hottest path a program has:
 * an echo round trip on the selector backend makes eight calls (two inline sends, two pending
 * receives that start and end, two deliveries) and ten events.  In Python each call is a frame, an
 * attribute walk, a float, a tuple of up to ten objects and, once the ring is full, the
 * eviction (deallocation) of the oldest tuple: about 5 us of a 25 us round trip, far over
 * the 5 % the core issue allows.  Here a call is a vectorcall into C, a few int increments,
 * one clock read and a struct written into a preallocated ring slot: no allocation at all
 * for an inline op, one small record (the ``OpRecord``) for a pending one.  Two more things
 * keep the Python side of a call small: the hottest sends and receive completions are one
 * call that makes the socket's own call and records it (``send_whole``, ``recv_into_done``:
 * the instrumented loop makes no more Python-level calls there than the bare one), and the
 * backend holds the other hot methods as bound methods made once -- a method looked up on
 * the Monitor, a subclass of this type, misses 3.11+'s specialised call path (measured:
 * 21 ns a call, against 3 ns through a bound method).
 *
 * The ring
 * --------
 * A fixed array of ``Slot`` structs indexed by ``seq % capacity``.  Every event takes the
 * next sequence number, so sequence numbers are dense and the writer simply overwrites the
 * oldest slot: nothing is freed on the producer side, and a reader that fell behind learns
 * how much it lost from ``seq_next - next_seq - capacity`` (counted in ``events_dropped``).
 *
 * A slot is one 64-byte cache line, aligned, holding plain numbers only: the time, up to six
 * int fields and the index of its string field in a per-monitor string table (error type
 * names: a handful of distinct values; index 0 is "").  Its seq is implied by its position.
 * So writing an event is eight stores into one line -- no reading of the old slot, no
 * reference counts -- and the ring's cache footprint per event is one line.  That footprint
 * matters: the ring is written by the loop thread and, when it does not fit in the core's
 * L2 cache next to the program's own working set, every event evicts some of the program's
 * lines (measured: a 64 Ki-slot ring of the earlier 88-byte slots cost ~3 points of echo
 * round-trip time more than a 4 Ki one).
 * Tuples -- the event contract of ``loopmon.monitor.events`` -- are built only by ``drain()``,
 * on the consumer's thread, and only for the events somebody drains: with no telemetry
 * attached, an instrumented loop never builds an event tuple.
 *
 * Threads: only the loop thread writes; one consumer drains.  Both hold the GIL, and no
 * call here runs Python code between reading and writing a slot -- with one trap: building
 * tuples allocates, an allocation may run the cyclic GC, and the GC may run a ``__del__``
 * that lets the loop thread in.  ``drain()`` therefore copies the slots it takes into a
 * private array first, and only then builds objects.
 *
 * What stays in Python (``loopmon/monitor/recorder.py``): readers (snapshot, outstanding,
 * live buffers), rare events (inline failures, explicit buffer pins and releases, discards),
 * buffers kept past their op's end, and error notes -- through ``_emit()`` and
 * ``_note_error()``.  ``loopmon/monitor/core_py.py`` is the same core in pure Python, used
 * when this module cannot be built; the test suite runs both.
 *
 * Every method swallows its own exceptions (instrumentation never raises into the
 * program): it hands them to ``self._note_error(exc)`` and returns None.
 *
 * This module is top-level (``_loopmon_speedups``), not ``loopmon._speedups``, on purpose:
 * a test run from a checkout imports ``loopmon`` from the source tree, which has no built
 * extension in it, while a top-level module still resolves to the installed one.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <time.h>

#define ABI_VERSION 4

/* must match loopmon/monitor/events.py: checked at import (recorder.py) and by the tests */
#define EV_OP_INLINE 1
#define EV_OP_SUBMIT 2
#define EV_OP_CANCEL 3
#define EV_OP_END 4
#define EV_BUF_PIN 5
#define EV_BUF_RELEASE 6
#define EV_DISCARD 7
#define MAX_CODE 7
#define KIND_RECV_INTO 1
#define KIND_SEND 4
#define OUTCOME_COMPLETED 1
#define OUTCOME_CANCELLED 2
#define FLAG_CANCEL_REQUESTED 1
#define FLAG_LATE_COMPLETION 2
#define FLAG_DISCARDED 4
#define N_KINDS 32

/* payload fields after (seq, code, t) per event code, and which one is a string (-1: none) */
static const int NFIELDS[MAX_CODE + 1] = {0, 7, 4, 1, 5, 3, 1, 2};
static const int STRPOS[MAX_CODE + 1] = {-1, 6, -1, -1, 3, -1, -1, -1};

/* 0: no byte accounting, 1: received from the OS, 2: sent; per kind (set by _set_directions) */
static unsigned char DIRECTION[N_KINDS];

static PyObject *EMPTY_STR;    /* "" */

/* time.monotonic(), read the cheapest way: on Linux, time.monotonic() *is*
   clock_gettime(CLOCK_MONOTONIC) (a vDSO call, no syscall), so read it directly and skip
   the runtime's checked wrapper; elsewhere (macOS: mach_absolute_time) go through it */
static inline double
now(void)
{
#if defined(__linux__)
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) == 0)
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
#endif
#if PY_VERSION_HEX >= 0x030D0000
    PyTime_t t;
    (void)PyTime_MonotonicRaw(&t);
    return PyTime_AsSecondsDouble(t);
#else
    return _PyTime_AsSecondsDouble(_PyTime_GetMonotonicClock());
#endif
}

/* ------------------------------------------------------------------------------ OpRecord */

typedef struct {
    PyObject_HEAD
    long long op_id;
    long long kind;
    long long fd;
    long long requested;
    long long buffer_id;      /* 0: holds no buffer */
    long long buffer_size;
    double submit_t;
    double cancel_t;          /* 0.0: no cancel requested */
    double buffer_pin_t;
    PyObject *peer;           /* NULL reads as None */
} OpRecordObject;

static PyTypeObject OpRecord_Type;
#define OpRecord_Check(o) (Py_TYPE(o) == &OpRecord_Type)

/* Dead records are kept for reuse (a pending receive per round trip makes and frees one):
   taking one off this list is a pointer pop, where obmalloc is a function call each way.
   Bounded; the GIL guards it. */
#define RECORD_FREELIST_MAX 256
static OpRecordObject *record_freelist[RECORD_FREELIST_MAX];
static int record_freelist_n;

static OpRecordObject *
oprecord_alloc(void)
{
    OpRecordObject *r;
    if (record_freelist_n > 0) {
        r = record_freelist[--record_freelist_n];
        (void)PyObject_Init((PyObject *)r, &OpRecord_Type);
    }
    else {
        r = PyObject_New(OpRecordObject, &OpRecord_Type);
    }
    if (r != NULL) {
        r->cancel_t = 0.0;
        r->peer = NULL;
    }
    return r;
}

static PyObject *
oprecord_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"op_id", "kind", "fd", "requested", "submit_t", "buffer_id",
                             "buffer_size", NULL};
    long long op_id, kind, fd, requested, buffer_id = 0, buffer_size = 0;
    double submit_t;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "LLLLd|LL:OpRecord", kwlist, &op_id, &kind,
                                     &fd, &requested, &submit_t, &buffer_id, &buffer_size))
        return NULL;
    OpRecordObject *r = oprecord_alloc();
    if (r == NULL)
        return NULL;
    r->op_id = op_id;
    r->kind = kind;
    r->fd = fd;
    r->requested = requested;
    r->submit_t = submit_t;
    r->buffer_id = buffer_id;
    r->buffer_size = buffer_size;
    r->buffer_pin_t = buffer_id ? submit_t : 0.0;
    return (PyObject *)r;
}

static void
oprecord_dealloc(OpRecordObject *r)
{
    Py_CLEAR(r->peer);
    if (record_freelist_n < RECORD_FREELIST_MAX)
        record_freelist[record_freelist_n++] = r;
    else
        PyObject_Free(r);
}

static PyObject *
oprecord_repr(OpRecordObject *r)
{
    return PyUnicode_FromFormat("<OpRecord op_id=%lld kind=%lld fd=%lld buffer_id=%lld>",
                                r->op_id, r->kind, r->fd, r->buffer_id);
}

static PyMemberDef oprecord_members[] = {
    {"op_id", T_LONGLONG, offsetof(OpRecordObject, op_id), READONLY, NULL},  /* table key */
    {"kind", T_LONGLONG, offsetof(OpRecordObject, kind), 0, NULL},
    {"fd", T_LONGLONG, offsetof(OpRecordObject, fd), 0, NULL},
    {"requested", T_LONGLONG, offsetof(OpRecordObject, requested), 0, NULL},
    {"buffer_id", T_LONGLONG, offsetof(OpRecordObject, buffer_id), 0, NULL},
    {"buffer_size", T_LONGLONG, offsetof(OpRecordObject, buffer_size), 0, NULL},
    {"submit_t", T_DOUBLE, offsetof(OpRecordObject, submit_t), 0, NULL},
    {"cancel_t", T_DOUBLE, offsetof(OpRecordObject, cancel_t), 0, NULL},
    {"buffer_pin_t", T_DOUBLE, offsetof(OpRecordObject, buffer_pin_t), 0, NULL},
    {"peer", T_OBJECT, offsetof(OpRecordObject, peer), 0, NULL},
    {NULL}
};

/* while its op runs, the record stands for its pinned buffer too: these read like a
   BufferRecord (see recorder.py) */
static PyObject *get_buf_id(OpRecordObject *r, void *c) { return PyLong_FromLongLong(r->buffer_id); }
static PyObject *get_size(OpRecordObject *r, void *c) { return PyLong_FromLongLong(r->buffer_size); }
static PyObject *get_pin_t(OpRecordObject *r, void *c) { return PyFloat_FromDouble(r->buffer_pin_t); }
static PyObject *get_op_end_t(OpRecordObject *r, void *c) { return PyFloat_FromDouble(0.0); }

static PyGetSetDef oprecord_getset[] = {
    {"buf_id", (getter)get_buf_id, NULL, NULL, NULL},
    {"size", (getter)get_size, NULL, NULL, NULL},
    {"pin_t", (getter)get_pin_t, NULL, NULL, NULL},
    {"op_end_t", (getter)get_op_end_t, NULL, NULL, NULL},
    {NULL}
};

static PyTypeObject OpRecord_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "_loopmon_speedups.OpRecord",
    .tp_doc = "One pending op (see loopmon.monitor.recorder.OpRecord).",
    .tp_basicsize = sizeof(OpRecordObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = oprecord_new,
    .tp_dealloc = (destructor)oprecord_dealloc,
    .tp_repr = (reprfunc)oprecord_repr,
    .tp_members = oprecord_members,
    .tp_getset = oprecord_getset,
};

/* --------------------------------------------------------------------------- MonitorCore */

#define SLOT_INTS 6            /* int fields of the widest event (op_inline: 6 + a string) */
#define MAX_STRINGS 4096        /* distinct strings a monitor keeps; more read as STR_OVERFLOW */
#define STR_OVERFLOW "(more distinct error names than loopmon keeps)"

typedef struct {
    double t;
    long long f[SLOT_INTS];   /* the event's int fields in order, its string field skipped */
    unsigned int str;         /* the string field: index into the monitor's string table */
    int code;
} Slot;                       /* 64 bytes: one cache line (the ring is line-aligned) */
_Static_assert(sizeof(Slot) == 64, "a ring slot is one cache line");

/* a slot taken by a drain, with the seq its position implied */
typedef struct {
    long long seq;
    Slot s;
} Taken;

typedef struct {
    PyObject_HEAD
    Slot *ring;               /* cache-line aligned, inside ring_mem */
    void *ring_mem;
    long long cap;
    long long cap_max;        /* the ring doubles up to this when a drain finds drops */
    unsigned long long mask;  /* cap - 1 when cap is a power of two (the default), else 0 */
    PyObject *strings;        /* list: the string table (index -> str); [0] is "" */
    PyObject *string_ids;     /* dict: str -> index */
    long long seq_next;       /* sequence number of the next event (ids come from it too) */
    long long next_seq;       /* the consumer's next wanted seq */
    OpRecordObject **tab;     /* the outstanding-op table (see "The op table"); owns refs */
    long long tab_mask;       /* capacity - 1 (a power of two) */
    int tab_shift;            /* 64 - log2(capacity) */
    long long tab_n;          /* records in it */
    long long fail_op_table;  /* test hook: > 0 makes that many inserts fail (MemoryError) */
    PyObject *buffers;        /* dict buf_id -> BufferRecord (kept past their op's end) */
    /* counters (plain ints; some Monitor counters are sums of these: see recorder.py) */
    long long ops_inline;
    long long ops_pended;
    long long inline_failed;
    long long ended_completed;
    long long ended_failed;
    long long ops_cancelled;
    long long cancel_requests;
    long long late_completions;
    long long bytes_received;
    long long bytes_delivered;
    long long bytes_discarded;
    long long bytes_abandoned;
    long long bytes_sent;
    long long buffers_pinned;
    long long events_dropped;
    long long instrumentation_errors;
} CoreObject;

/* the slot of event `seq`: a mask for the (default) power-of-two capacities -- a 64-bit
   division per event is tens of cycles -- and a modulo for any other */
static inline Slot *
slot_of(const CoreObject *m, long long seq)
{
    unsigned long long i = m->mask ? (unsigned long long)seq & m->mask
                                   : (unsigned long long)seq % (unsigned long long)m->cap;
    return &m->ring[i];
}

static inline unsigned long long
mask_for(long long cap)
{
    return (cap & (cap - 1)) == 0 ? (unsigned long long)cap - 1 : 0;
}

/* write event `seq`: its int fields in order (the string field skipped: `str` is its index
   in the string table).  Stores only: the old slot is never read. */
static inline void
put(CoreObject *m, long long seq, int code, double t, unsigned int str,
    long long a, long long b, long long c, long long d, long long e, long long f)
{
    Slot *sl = slot_of(m, seq);
    sl->t = t;
    sl->f[0] = a; sl->f[1] = b; sl->f[2] = c;
    sl->f[3] = d; sl->f[4] = e; sl->f[5] = f;
    sl->str = str;
    sl->code = code;
}

/* the string table index of `s` (added if new; -1 with an exception on failure).  Called
   only for a non-empty string field: an op that failed, or an event from Python. */
static long
string_id(CoreObject *m, PyObject *s)
{
    if (s == EMPTY_STR)
        return 0;
    if (!PyUnicode_Check(s)) {
        /* the contract says str; a caller's slip still records the op, as its str() */
        PyObject *text = PyObject_Str(s);
        if (text == NULL)
            return -1;
        long id = PyUnicode_Check(text) ? string_id(m, text) : 0;
        Py_DECREF(text);
        return id;
    }
    if (PyUnicode_GET_LENGTH(s) == 0)
        return 0;
    PyObject *id = PyDict_GetItemWithError(m->string_ids, s);
    if (id != NULL)
        return PyLong_AsLong(id);
    if (PyErr_Occurred())
        return -1;
    Py_ssize_t n = PyList_GET_SIZE(m->strings);
    if (n >= MAX_STRINGS)
        return 1;             /* STR_OVERFLOW: the table stays bounded */
    id = PyLong_FromSsize_t(n);
    if (id == NULL)
        return -1;
    int bad = PyList_Append(m->strings, s) < 0 || PyDict_SetItem(m->string_ids, s, id) < 0;
    Py_DECREF(id);
    return bad ? -1 : (long)n;
}

/* hand the pending exception to self._note_error (which counts it); never raises */
static void
note_error(CoreObject *m)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    PyObject *r = value ? PyObject_CallMethod((PyObject *)m, "_note_error", "O", value) : NULL;
    if (r == NULL) {
        PyErr_Clear();
        m->instrumentation_errors += 1;
    }
    Py_XDECREF(r);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
}

/* an int argument: small exact ints (fds, sizes, kinds -- every call) are read straight off
   the object; anything else through the full conversion */
static inline int
as_ll(PyObject *o, long long *out)
{
    if (PyLong_CheckExact(o)) {
#if PY_VERSION_HEX >= 0x030C0000
        if (PyUnstable_Long_IsCompact((PyLongObject *)o)) {
            *out = (long long)PyUnstable_Long_CompactValue((PyLongObject *)o);
            return 0;
        }
#else
        Py_ssize_t size = Py_SIZE(o);
        if (size >= -1 && size <= 1) {
            *out = (long long)size * (long long)((PyLongObject *)o)->ob_digit[0];
            return 0;
        }
#endif
    }
    long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred())
        return -1;
    *out = v;
    return 0;
}

/* ------------------------------------------------------------------------- The op table
 * The records of the ops in flight, by op id.  It was a dict (op_id -> OpRecord); an insert
 * and a pop per pending op, plus the int key object, were half of this module's cost per
 * round trip.  This is an open-addressing table of record pointers: Fibonacci hashing of the
 * 64-bit id (ids are dense sequence numbers; the multiply spreads them), linear probing,
 * and backward-shift deletion (no tombstones, so probes stay short however many ops come
 * and go).  It grows at half full and shrinks at an eighth, so memory follows the number of
 * ops in flight.  The table holds a reference to each record.
 *
 * Readers on other threads (snapshot, outstanding) walk it in one C call, under the GIL,
 * through _outstanding_records(): nothing here runs Python code while the table is
 * inconsistent.
 */
#define TAB_MIN_BITS 6

static inline long long
tab_home(const CoreObject *m, long long op_id)
{
    return (long long)(((unsigned long long)op_id * 0x9E3779B97F4A7C15ULL) >> m->tab_shift);
}

static int
tab_resize(CoreObject *m, int bits)
{
    long long cap = 1LL << bits;
    OpRecordObject **fresh = PyMem_Calloc((size_t)cap, sizeof(OpRecordObject *));
    if (fresh == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    OpRecordObject **old = m->tab;
    long long old_cap = old ? m->tab_mask + 1 : 0;
    m->tab = fresh;
    m->tab_mask = cap - 1;
    m->tab_shift = 64 - bits;
    for (long long i = 0; i < old_cap; i++) {
        OpRecordObject *r = old[i];
        if (r == NULL)
            continue;
        long long j = tab_home(m, r->op_id);
        while (fresh[j] != NULL)
            j = (j + 1) & m->tab_mask;
        fresh[j] = r;
    }
    PyMem_Free(old);
    return 0;
}

static inline int
tab_bits(const CoreObject *m)
{
    return 64 - m->tab_shift;
}

/* insert a record (takes a new reference); -1 with an exception set on failure */
static int
tab_insert(CoreObject *m, OpRecordObject *r)
{
    if (m->fail_op_table > 0) {
        m->fail_op_table--;
        PyErr_SetString(PyExc_MemoryError, "op table insert failed (injected: _fail_op_table)");
        return -1;
    }
    if ((m->tab_n + 1) * 2 > m->tab_mask + 1 && tab_resize(m, tab_bits(m) + 1) < 0)
        return -1;
    long long i = tab_home(m, r->op_id);
    while (m->tab[i] != NULL)
        i = (i + 1) & m->tab_mask;
    Py_INCREF(r);
    m->tab[i] = r;
    m->tab_n++;
    return 0;
}

/* the index of op_id's record, or -1 */
static inline long long
tab_find(const CoreObject *m, long long op_id)
{
    long long i = tab_home(m, op_id);
    OpRecordObject *r;
    while ((r = m->tab[i]) != NULL) {
        if (r->op_id == op_id)
            return i;
        i = (i + 1) & m->tab_mask;
    }
    return -1;
}

/* remove the record at index i and return it (the caller owns the table's reference) */
static OpRecordObject *
tab_remove_at(CoreObject *m, long long i)
{
    OpRecordObject **tab = m->tab;
    long long mask = m->tab_mask;
    OpRecordObject *gone = tab[i];
    /* backward shift: pull later members of the probe run into the hole when the hole lies
       on their way from their home slot */
    long long j = i;
    for (;;) {
        j = (j + 1) & mask;
        OpRecordObject *r = tab[j];
        if (r == NULL)
            break;
        long long home = tab_home(m, r->op_id);
        /* r may move to i unless its home lies cyclically in (i, j] */
        int stays = (i <= j) ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            tab[i] = r;
            i = j;
        }
    }
    tab[i] = NULL;
    m->tab_n--;
    int bits = tab_bits(m);
    if (bits > TAB_MIN_BITS && m->tab_n * 8 < m->tab_mask + 1 && tab_resize(m, bits - 1) < 0)
        PyErr_Clear();          /* could not shrink: keep the bigger table */
    return gone;
}

/* drop every record (dealloc) */
static void
tab_clear(CoreObject *m)
{
    OpRecordObject **tab = m->tab;
    long long cap = tab ? m->tab_mask + 1 : 0;
    m->tab = NULL;
    m->tab_n = 0;
    for (long long i = 0; i < cap; i++)
        Py_XDECREF(tab[i]);
    PyMem_Free(tab);
}

/* a zeroed ring of `cap` slots, cache-line aligned inside the block stored in *mem (the
   block to free); NULL (no exception set) when out of memory */
static Slot *
ring_alloc(long long cap, void **mem)
{
    *mem = PyMem_Calloc((size_t)cap * sizeof(Slot) + 64, 1);
    return *mem ? (Slot *)(((uintptr_t)*mem + 63) & ~(uintptr_t)63) : NULL;
}

static int
core_init(CoreObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"ring_capacity", "ring_max", NULL};
    long long cap = 1 << 16, cap_max = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|LL:MonitorCore", kwlist, &cap, &cap_max))
        return -1;
    if (cap_max < cap)
        cap_max = cap;
    if (cap < 1 || cap_max > (1LL << 28)) {
        PyErr_SetString(PyExc_ValueError, "ring_capacity must be between 1 and 2**28");
        return -1;
    }
    if (m->ring != NULL)
        return 0;   /* __init__ called twice: keep the ring */
    m->ring = ring_alloc(cap, &m->ring_mem);
    if (m->ring == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    m->cap = cap;
    m->cap_max = cap_max;
    m->mask = mask_for(cap);
    m->seq_next = 1;
    m->next_seq = 1;
    return 0;
}

static PyObject *
core_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    CoreObject *m = (CoreObject *)type->tp_alloc(type, 0);
    if (m == NULL)
        return NULL;
    m->buffers = PyDict_New();
    m->string_ids = PyDict_New();
    m->strings = Py_BuildValue("[Os]", EMPTY_STR, STR_OVERFLOW);   /* ids 0 and 1 */
    if (m->buffers == NULL || m->string_ids == NULL || m->strings == NULL
        || tab_resize(m, TAB_MIN_BITS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return (PyObject *)m;
}

static int
core_traverse(CoreObject *m, visitproc visit, void *arg)
{
    /* the op table's records hold no references back (peer is a str) */
    Py_VISIT(m->buffers);
    Py_VISIT(m->strings);
    Py_VISIT(m->string_ids);
    return 0;
}

static int
core_clear(CoreObject *m)
{
    Py_CLEAR(m->buffers);
    Py_CLEAR(m->strings);
    Py_CLEAR(m->string_ids);
    return 0;
}

static void
core_dealloc(CoreObject *m)
{
    /* a heap subtype's (Monitor's) type reference is dropped by subtype_dealloc, not here */
    PyObject_GC_UnTrack(m);
    core_clear(m);
    tab_clear(m);
    PyMem_Free(m->ring_mem);
    m->ring_mem = NULL;
    m->ring = NULL;
    Py_TYPE(m)->tp_free((PyObject *)m);
}

/* op_inline(kind, fd, requested, nbytes): an op submitted and completed in the same call */
static PyObject *
core_op_inline(CoreObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    long long kind, fd, requested, nbytes;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "op_inline(kind, fd, requested, nbytes)");
        goto error;
    }
    if (as_ll(args[0], &kind) || as_ll(args[1], &fd) || as_ll(args[2], &requested)
        || as_ll(args[3], &nbytes))
        goto error;
    long long seq = m->seq_next++;
    m->ops_inline++;
    int d = (kind >= 0 && kind < N_KINDS) ? DIRECTION[kind] : 0;
    if (d == 2)
        m->bytes_sent += nbytes;
    else if (d == 1)
        m->bytes_received += nbytes;
    put(m, seq, EV_OP_INLINE, now(), 0, seq, kind, fd, requested, OUTCOME_COMPLETED, nbytes);
    Py_RETURN_NONE;
error:
    note_error(m);
    Py_RETURN_NONE;
}

#define START_PLAIN 0           /* op_start(kind, fd, requested) */
#define START_PINNED 1          /* op_start_pinned(kind, fd, requested, size) */
#define START_RECV 2            /* op_start_recv(fd, size): recv_into a buffer of its size */

static PyObject *
start(CoreObject *m, PyObject *const *args, Py_ssize_t nargs, int form)
{
    long long kind, fd, requested, size = 0;
    static const char *usage[] = {"op_start(kind, fd, requested)",
                                  "op_start_pinned(kind, fd, requested, size)",
                                  "op_start_recv(fd, size)"};
    static const Py_ssize_t arity[] = {3, 4, 2};
    if (nargs != arity[form]) {
        PyErr_SetString(PyExc_TypeError, usage[form]);
        goto error;
    }
    if (form == START_RECV) {
        kind = KIND_RECV_INTO;
        if (as_ll(args[0], &fd) || as_ll(args[1], &size))
            goto error;
        requested = size;
    }
    else if (as_ll(args[0], &kind) || as_ll(args[1], &fd) || as_ll(args[2], &requested)
             || (form == START_PINNED && as_ll(args[3], &size)))
        goto error;
    int pinned = form != START_PLAIN;
    double t = now();
    long long seq = m->seq_next;
    OpRecordObject *r = oprecord_alloc();
    if (r == NULL)
        goto error;
    r->op_id = seq;
    r->kind = kind;
    r->fd = fd;
    r->requested = requested;
    r->submit_t = t;
    r->buffer_id = pinned ? seq + 1 : 0;
    r->buffer_size = pinned ? size : 0;
    r->buffer_pin_t = pinned ? t : 0.0;
    if (m->tab == NULL) {
        Py_DECREF(r);
        PyErr_SetString(PyExc_RuntimeError, "the monitor's op table is gone");
        goto error;
    }
    if (tab_insert(m, r) < 0) {
        Py_DECREF(r);
        goto error;
    }
    m->ops_pended++;
    put(m, seq, EV_OP_SUBMIT, t, 0, seq, kind, fd, requested, 0, 0);
    if (pinned) {
        m->buffers_pinned++;
        put(m, seq + 1, EV_BUF_PIN, t, 0, seq + 1, seq, size, 0, 0, 0);
        m->seq_next = seq + 2;
    }
    else {
        m->seq_next = seq + 1;
    }
    return (PyObject *)r;
error:
    note_error(m);
    Py_RETURN_NONE;
}

/* op_start(kind, fd, requested) -> OpRecord: an op goes pending */
static PyObject *
core_op_start(CoreObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    return start(m, args, nargs, START_PLAIN);
}

/* op_start_pinned(kind, fd, requested, size) -> OpRecord: op_start + buffer_pin(rec, size) */
static PyObject *
core_op_start_pinned(CoreObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    return start(m, args, nargs, START_PINNED);
}

/* op_start_recv(fd, size) -> OpRecord: op_start_pinned(KIND_RECV_INTO, fd, size, size), the
   pending receive of a stream transport (two arguments fewer to pass on the hottest path) */
static PyObject *
core_op_start_recv(CoreObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    return start(m, args, nargs, START_RECV);
}

/* op_cancel(rec): a cancel was requested (the op stays in flight) */
static PyObject *
core_op_cancel(CoreObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "op_cancel(rec)");
        goto error;
    }
    PyObject *o = args[0];
    if (o == Py_None)
        Py_RETURN_NONE;
    if (!OpRecord_Check(o)) {
        PyErr_Format(PyExc_TypeError, "op_cancel() wants an OpRecord, not %.100s",
                     Py_TYPE(o)->tp_name);
        goto error;
    }
    OpRecordObject *r = (OpRecordObject *)o;
    if (r->cancel_t != 0.0)
        Py_RETURN_NONE;
    double t = now();
    r->cancel_t = t;
    m->cancel_requests++;
    long long seq = m->seq_next++;
    put(m, seq, EV_OP_CANCEL, t, 0, r->op_id, 0, 0, 0, 0, 0);
    Py_RETURN_NONE;
error:
    note_error(m);
    Py_RETURN_NONE;
}

/* end the pending op `r` (the op table lets go of it); 0, or -1 with an exception set */
static int
end_op(CoreObject *m, OpRecordObject *r, long long outcome, long long nbytes, long err_id,
       long long flags, int keep)
{
    long long op_id = r->op_id;
    long long at = m->tab ? tab_find(m, op_id) : -1;
    if (at < 0 || m->tab[at] != r)
        return 0;             /* ended twice, drained at close already, or never started */
    Py_DECREF(tab_remove_at(m, at));   /* the caller's argument still holds r */
    double t = now();
    if (r->cancel_t != 0.0) {
        flags |= FLAG_CANCEL_REQUESTED;
        if (outcome == OUTCOME_COMPLETED) {
            flags |= FLAG_LATE_COMPLETION;
            m->late_completions++;
        }
    }
    if (outcome == OUTCOME_COMPLETED)
        m->ended_completed++;
    else if (outcome == OUTCOME_CANCELLED)
        m->ops_cancelled++;
    else
        m->ended_failed++;
    if (nbytes) {
        int d = (r->kind >= 0 && r->kind < N_KINDS) ? DIRECTION[r->kind] : 0;
        if (d == 1)
            m->bytes_received += nbytes;
        else if (d == 2)
            m->bytes_sent += nbytes;
    }
    long long seq = m->seq_next;
    put(m, seq++, EV_OP_END, t, (unsigned int)err_id, op_id, outcome, nbytes, flags, 0, 0);
    if ((flags & FLAG_DISCARDED) && nbytes) {
        m->bytes_discarded += nbytes;
        put(m, seq++, EV_DISCARD, t, 0, op_id, nbytes, 0, 0, 0, 0);
    }
    m->seq_next = seq;
    if (r->buffer_id) {
        if (keep) {
            /* held past the op's end (only a buffer-leak fault asks): Python's _keep_buffer
               moves it into the buffer table */
            PyObject *res = PyObject_CallMethod((PyObject *)m, "_keep_buffer", "Od",
                                                (PyObject *)r, t);
            if (res == NULL)
                return -1;
            Py_DECREF(res);
        }
        else {
            long long buf_id = r->buffer_id;
            r->buffer_id = 0;
            seq = m->seq_next++;
            put(m, seq, EV_BUF_RELEASE, t, 0, buf_id, 0, 0, 0, 0, 0);
        }
    }
    return 0;
}

/* op_end(rec, outcome, nbytes=0, error="", flags=0, keep_buffer=False) */
static PyObject *
core_op_end(CoreObject *m, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *names[] = {"rec", "outcome", "nbytes", "error", "flags", "keep_buffer"};
    PyObject *a[6] = {NULL, NULL, NULL, NULL, NULL, NULL};
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs > 6) {
        PyErr_SetString(PyExc_TypeError, "op_end() takes at most 6 arguments");
        goto error;
    }
    for (Py_ssize_t i = 0; i < nargs; i++)
        a[i] = args[i];
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, k);
        int found = 0;
        for (int j = 0; j < 6; j++) {
            if (PyUnicode_CompareWithASCIIString(name, names[j]) == 0) {
                if (a[j] != NULL) {
                    PyErr_Format(PyExc_TypeError, "op_end() got %s twice", names[j]);
                    goto error;
                }
                a[j] = args[nargs + k];
                found = 1;
                break;
            }
        }
        if (!found) {
            PyErr_Format(PyExc_TypeError, "op_end() got an unexpected keyword %R", name);
            goto error;
        }
    }
    if (a[0] == NULL || a[1] == NULL) {
        PyErr_SetString(PyExc_TypeError, "op_end(rec, outcome, ...)");
        goto error;
    }
    if (a[0] == Py_None)
        Py_RETURN_NONE;
    if (!OpRecord_Check(a[0])) {
        PyErr_Format(PyExc_TypeError, "op_end() wants an OpRecord, not %.100s",
                     Py_TYPE(a[0])->tp_name);
        goto error;
    }
    OpRecordObject *r = (OpRecordObject *)a[0];
    long long outcome, nbytes = 0, flags = 0;
    if (as_ll(a[1], &outcome) || (a[2] && as_ll(a[2], &nbytes)) || (a[4] && as_ll(a[4], &flags)))
        goto error;
    long err_id = a[3] ? string_id(m, a[3]) : 0;
    if (err_id < 0)
        goto error;
    int keep = 0;
    if (a[5] && (keep = PyObject_IsTrue(a[5])) < 0)
        goto error;

    if (end_op(m, r, outcome, nbytes, err_id, flags, keep) < 0)
        goto error;
    Py_RETURN_NONE;
error:
    note_error(m);
    Py_RETURN_NONE;
}

/* op_done(rec, nbytes): op_end(rec, OUTCOME_COMPLETED, nbytes) -- the common end, with no
   optional or keyword arguments to sort out */
static PyObject *
core_op_done(CoreObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    long long nbytes;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "op_done(rec, nbytes)");
        goto error;
    }
    PyObject *o = args[0];
    if (o == Py_None)
        Py_RETURN_NONE;
    if (!OpRecord_Check(o)) {
        PyErr_Format(PyExc_TypeError, "op_done() wants an OpRecord, not %.100s",
                     Py_TYPE(o)->tp_name);
        goto error;
    }
    if (as_ll(args[1], &nbytes) || end_op(m, (OpRecordObject *)o, OUTCOME_COMPLETED, nbytes,
                                          0, 0, 0) < 0)
        goto error;
    Py_RETURN_NONE;
error:
    note_error(m);
    Py_RETURN_NONE;
}

/* delivered(nbytes): received bytes handed to a protocol or returned to a caller */
static PyObject *
core_delivered(CoreObject *m, PyObject *arg)
{
    long long n;
    if (as_ll(arg, &n)) {
        note_error(m);
        Py_RETURN_NONE;
    }
    m->bytes_delivered += n;
    Py_RETURN_NONE;
}

/* ------------------------------------------------------- The syscall and its record, as one
 * On the selector backend the hottest ops are a stream's send that goes out whole and the
 * receive a readiness event completes.  Each was two calls from Python: the socket's method,
 * then the recorder's.  A call from Python bytecode costs several times what its C body
 * does (the frame's opcodes, the method lookup, the vectorcall and its argument checks), so
 * these make the socket's own call from here and record it after: the instrumented loop
 * makes as many Python-level calls as the bare one.  The socket call is the program's own
 * operation: its exception propagates exactly as if Python had made the call (and nothing is
 * recorded); the recording swallows its own errors, as everywhere. */
static PyObject *STR_SEND, *STR_RECV_INTO, *STR_FILENO;

/* The socket's method, found the way the interpreter's specialised LOAD_METHOD finds it:
   the descriptor on the type is kept with the type's version tag and reused while the type
   is unchanged (any change to a type's attributes gives it a new tag, and tags are never
   reused, so a stale type pointer can only miss).  Kept only where nothing on the instance
   can shadow it -- a type without an instance dict -- and only for a builtin method
   descriptor; anything else (a socket subclass overriding send(), a mock) takes the full
   lookup every call.  The full lookup is what a bare loop's bytecode does not pay: it was
   ~150 instructions a call here. */
typedef struct {
    PyTypeObject *type;       /* compared, never dereferenced */
    unsigned int version;
    PyObject *descr;          /* strong */
} MethodCache;

static MethodCache SEND_CACHE, RECV_INTO_CACHE, FILENO_CACHE;

/* is the type's version tag valid?  (3.12+ zero it on a change; earlier ones clear a flag) */
#if PY_VERSION_HEX >= 0x030C0000
#define TAG_VALID(tp) ((tp)->tp_version_tag != 0)
#else
#define TAG_VALID(tp) (PyType_HasFeature((tp), Py_TPFLAGS_VALID_VERSION_TAG) \
                       && (tp)->tp_version_tag != 0)
#endif

static int
no_instance_dict(PyTypeObject *tp)
{
#ifdef Py_TPFLAGS_MANAGED_DICT
    if (PyType_HasFeature(tp, Py_TPFLAGS_MANAGED_DICT))
        return 0;
#endif
    return tp->tp_dictoffset == 0;
}

/* name(args[0], *args[1:nargs]) -- a method call on args[0] */
static PyObject *
call_method(MethodCache *c, PyObject *name, PyObject *const *args, Py_ssize_t nargs)
{
    PyTypeObject *tp = Py_TYPE(args[0]);
    if (tp == c->type && tp->tp_version_tag == c->version && TAG_VALID(tp))
        return PyObject_Vectorcall(c->descr, args, (size_t)nargs, NULL);
    if (no_instance_dict(tp)) {
        PyObject *descr = _PyType_Lookup(tp, name);      /* borrowed; tags the type */
        if (descr != NULL && Py_IS_TYPE(descr, &PyMethodDescr_Type) && TAG_VALID(tp)) {
            Py_INCREF(descr);
            Py_XSETREF(c->descr, descr);
            c->type = tp;
            c->version = tp->tp_version_tag;
            return PyObject_Vectorcall(descr, args, (size_t)nargs, NULL);
        }
    }
    return PyObject_VectorcallMethod(name, (PyObject **)args, (size_t)nargs, NULL);
}

/* the byte length of a send's data (bytes and bytearray directly, else its buffer's) */
static int
data_nbytes(PyObject *data, long long *out)
{
    if (PyBytes_CheckExact(data)) {
        *out = PyBytes_GET_SIZE(data);
        return 0;
    }
    if (PyByteArray_CheckExact(data)) {
        *out = PyByteArray_GET_SIZE(data);
        return 0;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return -1;
    *out = view.len;
    PyBuffer_Release(&view);
    return 0;
}

/* send_whole(sock, data) -> n: sock.send(data); when all of data went out, recorded as
   op_inline(KIND_SEND, sock.fileno(), n, n).  Less (the caller pends the rest, which records
   the op as pending) or an exception: nothing recorded. */
static PyObject *
core_send_whole(CoreObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "send_whole(sock, data)");
        return NULL;
    }
    PyObject *res = call_method(&SEND_CACHE, STR_SEND, args, 2);
    if (res == NULL)
        return NULL;                    /* the socket's own exception */
    long long n, total, fd;
    if (as_ll(res, &n) || data_nbytes(args[1], &total))
        goto error;
    if (n != total)
        return res;
    PyObject *fdo = call_method(&FILENO_CACHE, STR_FILENO, args, 1);
    if (fdo == NULL)
        goto error;
    int bad = as_ll(fdo, &fd);
    Py_DECREF(fdo);
    if (bad)
        goto error;
    long long seq = m->seq_next++;
    m->ops_inline++;
    m->bytes_sent += n;
    put(m, seq, EV_OP_INLINE, now(), 0, seq, KIND_SEND, fd, n, OUTCOME_COMPLETED, n);
    return res;
error:
    note_error(m);
    return res;
}

/* recv_into_done(rec, sock, buf) -> n: sock.recv_into(buf), then op_done(rec, n).  An
   exception (would block, a reset) leaves the op in flight for the caller to handle. */
static PyObject *
core_recv_into_done(CoreObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "recv_into_done(rec, sock, buf)");
        return NULL;
    }
    PyObject *res = call_method(&RECV_INTO_CACHE, STR_RECV_INTO, args + 1, 2);
    if (res == NULL)
        return NULL;                    /* the socket's own exception */
    PyObject *o = args[0];
    long long n;
    if (o == Py_None)
        return res;
    if (!OpRecord_Check(o)) {
        PyErr_Format(PyExc_TypeError, "recv_into_done() wants an OpRecord, not %.100s",
                     Py_TYPE(o)->tp_name);
        goto error;
    }
    if (as_ll(res, &n) || end_op(m, (OpRecordObject *)o, OUTCOME_COMPLETED, n, 0, 0, 0) < 0)
        goto error;
    return res;
error:
    note_error(m);
    return res;
}

/* _emit(code, t, *fields) -> seq: an event from the Python side (rare paths).  Raises on a
   layout mismatch -- the Python callers catch it like any instrumentation error. */
static PyObject *
core_emit(CoreObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    long long code, f[SLOT_INTS] = {0};
    long str = 0;
    int k = 0;
    if (nargs < 2 || as_ll(args[0], &code))
        return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_TypeError, "_emit(code, t, *fields)");
    if (code < 1 || code > MAX_CODE || nargs - 2 != NFIELDS[code])
        return PyErr_Format(PyExc_ValueError, "_emit: event code %lld does not take %zd fields",
                            code, nargs - 2);
    double t = PyFloat_AsDouble(args[1]);
    if (t == -1.0 && PyErr_Occurred())
        return NULL;
    for (Py_ssize_t i = 0; i < nargs - 2; i++) {
        if (i == STRPOS[code]) {
            if ((str = string_id(m, args[2 + i])) < 0)
                return NULL;
        }
        else if (as_ll(args[2 + i], &f[k++]))
            return NULL;
    }
    long long seq = m->seq_next++;
    put(m, seq, (int)code, t, (unsigned int)str, f[0], f[1], f[2], f[3], f[4], f[5]);
    return PyLong_FromLongLong(seq);
}

/* Is this event one a healthy program does not make: a cancel, a discard, a failure, an op
   end with flags or an outcome other than completed?  (drain_notable) */
static inline int
is_notable(const Slot *sl)
{
    switch (sl->code) {
    case EV_OP_CANCEL:
    case EV_DISCARD:
        return 1;
    case EV_OP_INLINE:
        return sl->f[4] != OUTCOME_COMPLETED;
    case EV_OP_END:           /* (op_id, outcome, nbytes, flags) + the error string */
        return sl->f[1] != OUTCOME_COMPLETED || sl->f[3] != 0;
    default:
        return 0;
    }
}

static PyObject *
slot_to_tuple(const Taken *taken, PyObject *strings)
{
    const Slot *sl = &taken->s;
    int code = (sl->code >= 1 && sl->code <= MAX_CODE) ? sl->code : 0;
    int nf = NFIELDS[code];
    PyObject *tup = PyTuple_New(3 + nf);
    if (tup == NULL)
        return NULL;
    PyObject *o;
    if ((o = PyLong_FromLongLong(taken->seq)) == NULL)
        goto fail;
    PyTuple_SET_ITEM(tup, 0, o);
    if ((o = PyLong_FromLong(sl->code)) == NULL)
        goto fail;
    PyTuple_SET_ITEM(tup, 1, o);
    if ((o = PyFloat_FromDouble(sl->t)) == NULL)
        goto fail;
    PyTuple_SET_ITEM(tup, 2, o);
    for (int j = 0, k = 0; j < nf; j++) {
        if (j == STRPOS[code]) {
            o = sl->str < (unsigned int)PyList_GET_SIZE(strings)
                ? PyList_GET_ITEM(strings, sl->str) : EMPTY_STR;
            Py_INCREF(o);
        }
        else if ((o = PyLong_FromLongLong(sl->f[k++])) == NULL)
            goto fail;
        PyTuple_SET_ITEM(tup, 3 + j, o);
    }
    return tup;
fail:
    Py_DECREF(tup);     /* unset items are NULL: tuple dealloc skips them */
    return NULL;
}

/* Double the ring (up to cap_max), keeping the queued events: the consumer could not keep
   up with this capacity.  Runs on the consumer's thread with the GIL held and calls no
   Python code, so the loop thread never sees a half-moved ring.  On failure: keep the old. */
static void
ring_grow(CoreObject *m)
{
    long long cap = m->cap * 2 < m->cap_max ? m->cap * 2 : m->cap_max;
    void *mem;
    Slot *ring = ring_alloc(cap, &mem);
    if (ring == NULL)
        return;
    long long first = m->seq_next - m->cap > m->next_seq ? m->seq_next - m->cap : m->next_seq;
    for (long long seq = first; seq < m->seq_next; seq++)
        ring[(unsigned long long)seq % (unsigned long long)cap] = *slot_of(m, seq);
    PyMem_Free(m->ring_mem);
    m->ring_mem = mem;
    m->ring = ring;
    m->cap = cap;
    m->mask = mask_for(cap);
}

/* A drain takes up to max_items of the queued events, oldest first; events the writer has
   overwritten since the last drain are counted as dropped first (and the ring grows, if it
   may, so that it happens less).  Returns how many. */
static long long
take_count(CoreObject *m, long long max_items)
{
    long long avail = m->seq_next - m->next_seq;
    if (avail > m->cap) {
        m->events_dropped += avail - m->cap;
        m->next_seq = m->seq_next - m->cap;
        avail = m->cap;
        if (m->cap < m->cap_max)
            ring_grow(m);
    }
    long long n = avail < max_items ? avail : max_items;
    return n > 0 ? n : 0;
}

/* The list of tuples of `kept` copied slots; frees the copies. */
static PyObject *
build_list(CoreObject *m, Taken *copy, long long kept)
{
    PyObject *strings = m->strings;     /* held: building may run the GC */
    PyObject *out = strings ? PyList_New((Py_ssize_t)kept) : NULL;
    if (strings == NULL && !PyErr_Occurred())
        PyErr_SetString(PyExc_RuntimeError, "the monitor's string table is gone");
    if (out != NULL) {
        Py_INCREF(strings);
        for (long long i = 0; i < kept; i++) {
            PyObject *tup = slot_to_tuple(&copy[i], strings);
            if (tup == NULL) {
                Py_CLEAR(out);
                break;
            }
            PyList_SET_ITEM(out, (Py_ssize_t)i, tup);
        }
        Py_DECREF(strings);
    }
    PyMem_Free(copy);
    return out;
}

static int
parse_max_items(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t at, long long *max_items)
{
    *max_items = 1LL << 30;
    return nargs > at ? as_ll(args[at], max_items) : 0;
}

/* take up to max_items queued events and build the tuples of all of them, or of the notable
   ones only; single consumer (see the header).  The slots are copied first: building
   objects may let the loop thread in, and it may overwrite them. */
static PyObject *
drain_impl(CoreObject *m, PyObject *const *args, Py_ssize_t nargs, int notable_only)
{
    long long max_items;
    if (nargs > 1)
        return PyErr_Format(PyExc_TypeError, "drain(max_items=2**30)");
    if (parse_max_items(args, nargs, 0, &max_items))
        return NULL;
    long long n = take_count(m, max_items);
    if (n == 0)
        return PyList_New(0);
    Taken *copy = PyMem_Malloc((size_t)n * sizeof(Taken));
    if (copy == NULL)
        return PyErr_NoMemory();
    long long first = m->next_seq, kept = 0;
    for (long long i = 0; i < n; i++) {
        const Slot *sl = slot_of(m, first + i);
        if (notable_only && !is_notable(sl))
            continue;
        copy[kept].seq = first + i;
        copy[kept].s = *sl;
        kept++;
    }
    m->next_seq = first + n;
    return build_list(m, copy, kept);
}

/* A ranged drain (drain_range, drain_window): take up to max_items queued events like
   drain() (take_count), of which positions *start..stop-1, clamped, are read.  Returns how
   many to read; *n is how many are taken, *first the seq of the first taken. */
static long long
range_take(CoreObject *m, long long max_items, long long *start, long long stop,
           long long *n, long long *first)
{
    *n = take_count(m, max_items);
    *first = m->next_seq;
    if (*start < 0)
        *start = 0;
    if (stop > *n)
        stop = *n;
    return stop > *start ? stop - *start : 0;
}

/* copy `kept` slots from seq `from` on into `dst` (plain C: nothing here lets the loop
   thread in), then consume the taken events up to seq `end` */
static void
range_copy(CoreObject *m, Taken *dst, long long from, long long kept, long long end)
{
    for (long long i = 0; i < kept; i++) {
        dst[i].seq = from + i;
        dst[i].s = *slot_of(m, from + i);
    }
    m->next_seq = end;
}

/* drain_range(start, stop, max_items=2**30) -> (first_seq, tuples): take up to max_items
   queued events like drain(), build only those at positions start..stop-1 of what was taken
   and read no other slot (a sampler's window; drain_range(0, 0) consumes without reading) */
static PyObject *
core_drain_range(CoreObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    long long start, stop, max_items;
    if (nargs < 2 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "drain_range(start, stop, max_items=2**30)");
        return NULL;
    }
    if (as_ll(args[0], &start) || as_ll(args[1], &stop)
        || parse_max_items(args, nargs, 2, &max_items))
        return NULL;
    long long n, first, kept = range_take(m, max_items, &start, stop, &n, &first);
    Taken *copy = PyMem_Malloc((size_t)(kept ? kept : 1) * sizeof(Taken));
    if (copy == NULL)
        return PyErr_NoMemory();
    range_copy(m, copy, first + start, kept, first + n);
    PyObject *out = build_list(m, copy, kept);
    return out == NULL ? NULL : Py_BuildValue("(LN)", first, out);
}

/* drain(max_items=2**30) -> list of event tuples */
static PyObject *
core_drain(CoreObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    return drain_impl(m, args, nargs, 0);
}

/* drain_notable(max_items=2**30) -> the notable events among those taken (the rest are
   consumed unbuilt: a healthy program's events cost the consumer no objects) */
static PyObject *
core_drain_notable(CoreObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    return drain_impl(m, args, nargs, 1);
}

/* events_queued() -> how many events a drain() would return now (at most the capacity) */
static PyObject *
core_events_queued(CoreObject *m, PyObject *unused)
{
    long long avail = m->seq_next - m->next_seq;
    return PyLong_FromLongLong(avail > m->cap ? m->cap : avail);
}

/* _outstanding_records() -> list of the records in flight (any order; one C call, so a
   consistent copy under the GIL) */
static PyObject *
core_outstanding_records(CoreObject *m, PyObject *unused)
{
    PyObject *out = PyList_New(0);
    if (out == NULL || m->tab == NULL)
        return out;
    for (long long i = 0; i <= m->tab_mask; i++) {
        if (m->tab[i] != NULL && PyList_Append(out, (PyObject *)m->tab[i]) < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}

/* _is_outstanding(rec) -> bool: is this very record in flight? */
static PyObject *
core_is_outstanding(CoreObject *m, PyObject *rec)
{
    if (!OpRecord_Check(rec) || m->tab == NULL)
        Py_RETURN_FALSE;
    long long at = tab_find(m, ((OpRecordObject *)rec)->op_id);
    return PyBool_FromLong(at >= 0 && m->tab[at] == (OpRecordObject *)rec);
}

/* not_in_flight(op_ids) -> set of those ids that are not in flight (ended, or never were) */
static PyObject *
core_not_in_flight(CoreObject *m, PyObject *ids)
{
    PyObject *out = PySet_New(NULL);
    PyObject *it = out ? PyObject_GetIter(ids) : NULL;
    if (it == NULL) {
        Py_XDECREF(out);
        return NULL;
    }
    PyObject *o;
    while ((o = PyIter_Next(it)) != NULL) {
        long long id = PyLong_AsLongLong(o);
        int bad = id == -1 && PyErr_Occurred();
        if (!bad && (m->tab == NULL || tab_find(m, id) < 0) && PySet_Add(out, o) < 0)
            bad = 1;
        Py_DECREF(o);
        if (bad) {
            Py_DECREF(it);
            Py_DECREF(out);
            return NULL;
        }
    }
    Py_DECREF(it);
    if (PyErr_Occurred()) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

/* The telemetry sampler's window taken straight from the ring slots (select and pack in
   C): its own file, for its own concern; it sees this file's definitions. */
#include "_drain_window.h"

static PyMethodDef core_methods[] = {
    {"op_inline", (PyCFunction)(void (*)(void))core_op_inline, METH_FASTCALL,
     "op_inline(kind, fd, requested, nbytes): an op completed inside its submission call."},
    {"op_start", (PyCFunction)(void (*)(void))core_op_start, METH_FASTCALL,
     "op_start(kind, fd, requested) -> OpRecord: an op goes pending."},
    {"op_start_pinned", (PyCFunction)(void (*)(void))core_op_start_pinned, METH_FASTCALL,
     "op_start_pinned(kind, fd, requested, size) -> OpRecord: op_start + buffer_pin."},
    {"op_start_recv", (PyCFunction)(void (*)(void))core_op_start_recv, METH_FASTCALL,
     "op_start_recv(fd, size) -> OpRecord: op_start_pinned(KIND_RECV_INTO, fd, size, size)."},
    {"op_done", (PyCFunction)(void (*)(void))core_op_done, METH_FASTCALL,
     "op_done(rec, nbytes): op_end(rec, OUTCOME_COMPLETED, nbytes)."},
    {"op_cancel", (PyCFunction)(void (*)(void))core_op_cancel, METH_FASTCALL,
     "op_cancel(rec): a cancel was requested; the op stays in flight."},
    {"op_end", (PyCFunction)(void (*)(void))core_op_end, METH_FASTCALL | METH_KEYWORDS,
     "op_end(rec, outcome, nbytes=0, error='', flags=0, keep_buffer=False): a pending op ended."},
    {"send_whole", (PyCFunction)(void (*)(void))core_send_whole, METH_FASTCALL,
     "send_whole(sock, data) -> sock.send(data); recorded as an inline send when all of "
     "data went out."},
    {"recv_into_done", (PyCFunction)(void (*)(void))core_recv_into_done, METH_FASTCALL,
     "recv_into_done(rec, sock, buf) -> sock.recv_into(buf), then op_done(rec, n)."},
    {"delivered", (PyCFunction)core_delivered, METH_O,
     "delivered(nbytes): received bytes handed to a protocol or returned to a caller."},
    {"_emit", (PyCFunction)(void (*)(void))core_emit, METH_FASTCALL,
     "_emit(code, t, *fields) -> seq: record an event built on the Python side."},
    {"drain", (PyCFunction)(void (*)(void))core_drain, METH_FASTCALL,
     "drain(max_items=2**30) -> list of event tuples.  Single consumer."},
    {"drain_range", (PyCFunction)(void (*)(void))core_drain_range, METH_FASTCALL,
     "drain_range(start, stop, max_items=2**30) -> (first_seq, tuples): take like drain(), "
     "build only the events at positions start..stop-1 of those taken."},
    {"drain_notable", (PyCFunction)(void (*)(void))core_drain_notable, METH_FASTCALL,
     "drain_notable(max_items=2**30) -> like drain(), but only cancels, discards, failures "
     "and op ends with flags or a non-completed outcome are returned."},
    {"events_queued", (PyCFunction)core_events_queued, METH_NOARGS,
     "events_queued() -> events a drain() would return now."},
    {"_outstanding_records", (PyCFunction)core_outstanding_records, METH_NOARGS,
     "_outstanding_records() -> list of the OpRecords in flight (any order)."},
    {"_is_outstanding", (PyCFunction)core_is_outstanding, METH_O,
     "_is_outstanding(rec) -> is this very record in flight?"},
    {"not_in_flight", (PyCFunction)core_not_in_flight, METH_O,
     "not_in_flight(op_ids) -> set of the given op ids that are not in flight (ended, or "
     "never started): one table lookup per id."},
    DRAIN_WINDOW_METHODS
    {NULL}
};

#define CORE_LL(name, field) {name, T_LONGLONG, offsetof(CoreObject, field), 0, NULL}
static PyMemberDef core_members[] = {
    {"ring_capacity", T_LONGLONG, offsetof(CoreObject, cap), READONLY, NULL},
    {"ring_max", T_LONGLONG, offsetof(CoreObject, cap_max), READONLY, NULL},
    {"_seq_next", T_LONGLONG, offsetof(CoreObject, seq_next), READONLY, NULL},
    {"_next_seq", T_LONGLONG, offsetof(CoreObject, next_seq), READONLY, NULL},
    {"_fail_op_table", T_LONGLONG, offsetof(CoreObject, fail_op_table), 0, NULL},
    {"_buffers", T_OBJECT_EX, offsetof(CoreObject, buffers), 0, NULL},
    CORE_LL("ops_inline", ops_inline),
    CORE_LL("_ops_pended", ops_pended),
    CORE_LL("_inline_failed", inline_failed),
    CORE_LL("_ended_completed", ended_completed),
    CORE_LL("_ended_failed", ended_failed),
    CORE_LL("ops_cancelled", ops_cancelled),
    CORE_LL("cancel_requests", cancel_requests),
    CORE_LL("late_completions", late_completions),
    CORE_LL("bytes_received", bytes_received),
    CORE_LL("bytes_delivered", bytes_delivered),
    CORE_LL("bytes_discarded", bytes_discarded),
    CORE_LL("bytes_abandoned", bytes_abandoned),
    CORE_LL("bytes_sent", bytes_sent),
    CORE_LL("buffers_pinned", buffers_pinned),
    CORE_LL("events_dropped", events_dropped),
    CORE_LL("instrumentation_errors", instrumentation_errors),
    {NULL}
};

static PyTypeObject Core_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "_loopmon_speedups.MonitorCore",
    .tp_doc = "The Monitor's hot path and event ring (see loopmon.monitor.recorder).",
    .tp_basicsize = sizeof(CoreObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = core_new,
    .tp_init = (initproc)core_init,
    .tp_dealloc = (destructor)core_dealloc,
    .tp_traverse = (traverseproc)core_traverse,
    .tp_clear = (inquiry)core_clear,
    .tp_methods = core_methods,
    .tp_members = core_members,
};

/* _set_directions(seq): per kind, 0 (no byte accounting), 1 (received) or 2 (sent) */
static PyObject *
mod_set_directions(PyObject *mod, PyObject *seq)
{
    PyObject *fast = PySequence_Fast(seq, "_set_directions wants a sequence");
    if (fast == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    unsigned char tmp[N_KINDS] = {0};
    for (Py_ssize_t i = 0; i < n && i < N_KINDS; i++) {
        long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(fast, i));
        if (v == -1 && PyErr_Occurred()) {
            Py_DECREF(fast);
            return NULL;
        }
        tmp[i] = (unsigned char)(v == 1 ? 1 : v == 2 ? 2 : 0);
    }
    Py_DECREF(fast);
    memcpy(DIRECTION, tmp, sizeof(tmp));
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"_set_directions", mod_set_directions, METH_O,
     "_set_directions(seq): per op kind, 0 none, 1 received, 2 sent."},
    {NULL}
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT, "_loopmon_speedups",
    "loopmon's Monitor hot path and event ring in C (see loopmon/monitor/_speedups.c).",
    -1, module_methods,
};

PyMODINIT_FUNC
PyInit__loopmon_speedups(void)
{
    if (PyType_Ready(&OpRecord_Type) < 0 || PyType_Ready(&Core_Type) < 0)
        return NULL;
    EMPTY_STR = PyUnicode_FromString("");
    STR_SEND = PyUnicode_InternFromString("send");
    STR_RECV_INTO = PyUnicode_InternFromString("recv_into");
    STR_FILENO = PyUnicode_InternFromString("fileno");
    if (EMPTY_STR == NULL || STR_SEND == NULL || STR_RECV_INTO == NULL || STR_FILENO == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&speedups_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&OpRecord_Type);
    Py_INCREF(&Core_Type);
    if (PyModule_AddObject(m, "OpRecord", (PyObject *)&OpRecord_Type) < 0
        || PyModule_AddObject(m, "MonitorCore", (PyObject *)&Core_Type) < 0
        || PyModule_AddIntConstant(m, "ABI_VERSION", ABI_VERSION) < 0)
        goto fail;
    PyObject *constants = Py_BuildValue(
        "{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i}",
        "EV_OP_INLINE", EV_OP_INLINE, "EV_OP_SUBMIT", EV_OP_SUBMIT,
        "EV_OP_CANCEL", EV_OP_CANCEL, "EV_OP_END", EV_OP_END, "EV_BUF_PIN", EV_BUF_PIN,
        "EV_BUF_RELEASE", EV_BUF_RELEASE, "EV_DISCARD", EV_DISCARD,
        "OUTCOME_COMPLETED", OUTCOME_COMPLETED, "OUTCOME_CANCELLED", OUTCOME_CANCELLED,
        "FLAG_CANCEL_REQUESTED", FLAG_CANCEL_REQUESTED,
        "FLAG_LATE_COMPLETION", FLAG_LATE_COMPLETION, "FLAG_DISCARDED", FLAG_DISCARDED,
        "KIND_RECV_INTO", KIND_RECV_INTO, "KIND_SEND", KIND_SEND);
    if (constants == NULL || PyModule_AddObject(m, "CONSTANTS", constants) < 0) {
        Py_XDECREF(constants);
        goto fail;
    }
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
