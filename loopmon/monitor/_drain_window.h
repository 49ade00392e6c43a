/*
 * _drain_window.h: the telemetry sampler's window, selected and packed straight from the
 * ring's slots.  Included by _speedups.c just before the Core's method table (it sees every
 * definition above that point); DRAIN_WINDOW_METHODS is spliced into the table.
 *
 * Why
 * ---
 * A client with an event budget (loopmon/telemetry/event_budget.py) is sent, each tick, a
 * window of whole op lifecycles: the inline ops of ~1000 consecutive events and every op that
 * went pending in them and ended within a tail after them (submit, buffer pin, end, buffer
 * release).  In Python that was three passes on the telemetry thread, all holding the GIL the
 * monitored loop needs: drain_range() built a tuple per event of the window and its tail
 * (~0.4 ms), EventSampler._lifecycles selected the lifecycles (~0.3 ms), and
 * packed_events.encode_packed packed them column-wise (~0.25 ms) -- ~1 ms per 50 ms tick, and
 * the tuples freed after.  Here the same is one C call and no per-event object: the slots are
 * copied, the selection runs on the copy with a few small hash sets, and the result is
 * written directly as the FORM_PACKED OpEvents payload of packed_events.py.
 *
 * drain_window(start, stop, max_items, window)
 *     -> (first_seq, selected, payload or None, span or None)
 * takes up to max_items queued events like drain_range(), copies those at positions
 * start..stop-1 of what was taken (the window, `window` events from `start`, then its tail),
 * and selects exactly what EventSampler._lifecycles selects, with hi = the seq after the
 * window:
 *   - the inline ops with seq < hi;
 *   - for every op id of a submit with seq < hi ("started"): the ends with that op id
 *     ("closing"), and for the op ids so closed every submit, every buffer pin (by its op id)
 *     and the release of every such pin's buffer (a pin's buffer id is its seq) -- all
 *     within the copied range.
 * `payload` is what encode_packed() gives for those events in seq order (None when none is
 * selected); `span` the longest end seq - op id among the closing ends (None when none),
 * which the sampler's learning windows use to size later tails.  Set semantics throughout,
 * like the Python: it does not assume op id == submit seq, so any stream selects the same.
 *
 * The packed bytes: byte FORM_PACKED, u32 BE count, one code byte per event, the string
 * table as a tagged list of str (values.py: 'l' u32 BE count, then 's' u32 BE length UTF-8
 * per entry; entry 0 is ""), then per code present, ascending: the int fields of its events
 * row-major as i64 LE (seq first, then the layout's ints), their t as f64 LE, and the u32 LE
 * string indices if the layout has a string.  The layouts are the slot layouts (NFIELDS,
 * STRPOS) with seq prepended, which is what _LAYOUTS in packed_events.py says.  The only
 * difference from encode_packed: a table with error names lists them in first-use order
 * (Python's follows set iteration order, which varies by process); decoders see the same
 * events either way.
 *
 * Threads: the slots are copied with the GIL held and nothing between reading a slot and
 * writing the copy runs Python code (see the header of _speedups.c).  The selection and the
 * packing work only on that private copy and on buffers allocated before (one block; a
 * small one is kept from call to call, see dw_scratch), so for a large window
 * (DW_RELEASE_MIN events and more, in a block of its own) they run with the GIL released.  For the usual
 * window (~1-2 k events: tens of microseconds) they do not: handing the GIL to the loop
 * thread and taking it back costs the loop more than the work itself.  The string table
 * (m->strings, a list the loop thread may append to) is read only with the GIL held, after.
 */

#define DW_RELEASE_MIN 16384     /* copied events from which the select/pack drops the GIL */

/* ---- a set of int64 keys: open addressing, Fibonacci hashing, linear probing ---------- */
typedef struct {
    long long *keys;
    unsigned char *used;
    unsigned long long mask;
    int shift;
} DwSet;

static inline unsigned long long
dw_home(const DwSet *s, long long k)
{
    return ((unsigned long long)k * 0x9E3779B97F4A7C15ULL) >> s->shift;
}

static inline void
dw_add(DwSet *s, long long k)
{
    unsigned long long i = dw_home(s, k);
    while (s->used[i]) {
        if (s->keys[i] == k)
            return;
        i = (i + 1) & s->mask;
    }
    s->used[i] = 1;
    s->keys[i] = k;
}

static inline int
dw_has(const DwSet *s, long long k)
{
    unsigned long long i = dw_home(s, k);
    while (s->used[i]) {
        if (s->keys[i] == k)
            return 1;
        i = (i + 1) & s->mask;
    }
    return 0;
}

/* ---- little-endian stores, whatever the host ------------------------------------------ */
static inline unsigned char *
dw_le64(unsigned char *p, unsigned long long v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
    return p + 8;
}

static inline unsigned char *
dw_be32(unsigned char *p, unsigned long v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
    return p + 4;
}

/* int fields of a slot's event (its string field, if any, is not one); seq comes first */
static inline int
dw_nints(int code)
{
    return NFIELDS[code] - (STRPOS[code] >= 0);
}

/* Everything the select/pack part needs: one block, carved up (see dw_alloc). */
typedef struct {
    Taken *copy;
    long long n;              /* copied events */
    long long hi;             /* seq after the window */
    Py_ssize_t nstrings;      /* the string table's size when the slots were copied */
    unsigned char *sel;       /* per copied event: selected? */
    DwSet started, closed, bufs;
    void *block;
    int scratch;              /* block is dw_scratch (not to be freed) */
    /* results */
    long long count;          /* selected events */
    int have_span;
    long long span;
    unsigned char *codes;     /* count code bytes */
    unsigned char *body;
    size_t body_len;
    unsigned int *str_ids;    /* distinct string ids used, first-use order ([0] = 0: "") */
    int n_str_ids;
    unsigned short *str_index;  /* string id -> table index (0: not yet / ""); nstrings */
} DwWork;

/* One block kept from call to call: a tick's window is ~1-2 k events (~0.3 MB here), and a
   fresh block each tick cost page faults and heap growth (mprotect) on the telemetry thread
   -- measured ~3 % of its samples.  Used only by a call that holds the GIL throughout (the
   GIL guards it); `dw_scratch_busy` covers a call re-entered from a finalizer while it builds
   its result.  Blocks over DW_SCRATCH_MAX are allocated per call. */
#define DW_SCRATCH_MAX ((size_t)4 << 20)
static void *dw_scratch;
static size_t dw_scratch_size;
static int dw_scratch_busy;

static void
dw_free(DwWork *w)
{
    if (w->scratch)
        dw_scratch_busy = 0;
    else
        PyMem_RawFree(w->block);
    w->block = NULL;
    w->scratch = 0;
}

static inline size_t
dw_align(size_t x)
{
    return (x + 15) & ~(size_t)15;
}

/* lay out the copy, the sets and the output buffers for n events in one block (the scratch
   block if `may_share` and it is free); -1 when out of memory */
static int
dw_alloc(DwWork *w, long long n, Py_ssize_t nstrings, int may_share)
{
    int bits = 4;
    while ((1LL << bits) < 2 * n)
        bits++;
    size_t cap = (size_t)1 << bits, un = (size_t)(n ? n : 1), ns = (size_t)nstrings + 1;
    size_t at_copy = 0;
    size_t at_body = at_copy + dw_align(un * sizeof(Taken));
    /* the widest event: 7 ints, a float and a string index */
    size_t at_keys = at_body + dw_align(un * (7 * 8 + 8 + 4));
    size_t at_ids = at_keys + dw_align(3 * cap * sizeof(long long));
    size_t at_index = at_ids + dw_align(ns * sizeof(unsigned int));
    size_t at_used = at_index + dw_align(ns * sizeof(unsigned short));
    size_t at_sel = at_used + dw_align(3 * cap);
    size_t at_codes = at_sel + dw_align(un);
    size_t size = at_codes + dw_align(un);
    w->n = n;
    w->nstrings = nstrings;
    w->scratch = 0;
    if (may_share && !dw_scratch_busy && size <= DW_SCRATCH_MAX) {
        if (dw_scratch_size < size) {
            size_t want = dw_scratch_size ? dw_scratch_size : 64 * 1024;
            while (want < size)
                want *= 2;
            void *mem = PyMem_RawMalloc(want);
            if (mem != NULL) {
                PyMem_RawFree(dw_scratch);
                dw_scratch = mem;
                dw_scratch_size = want;
            }
        }
        if (dw_scratch_size >= size) {
            w->block = dw_scratch;
            w->scratch = dw_scratch_busy = 1;
        }
    }
    if (!w->scratch)
        w->block = PyMem_RawMalloc(size);
    if (w->block == NULL)
        return -1;
    char *b = w->block;
    /* zeroed: the sets' used flags, the string index, the selection marks */
    memset(b + at_index, 0, at_codes - at_index);
    w->copy = (Taken *)(b + at_copy);
    w->body = (unsigned char *)(b + at_body);
    w->str_ids = (unsigned int *)(b + at_ids);
    w->str_index = (unsigned short *)(b + at_index);
    w->sel = (unsigned char *)(b + at_sel);
    w->codes = (unsigned char *)(b + at_codes);
    long long *keys = (long long *)(b + at_keys);
    unsigned char *used = (unsigned char *)(b + at_used);
    DwSet *sets[3] = {&w->started, &w->closed, &w->bufs};
    for (int i = 0; i < 3; i++) {
        sets[i]->keys = keys + i * cap;
        sets[i]->used = used + i * cap;
        sets[i]->mask = cap - 1;
        sets[i]->shift = 64 - bits;
    }
    return 0;
}

/* The selection (EventSampler._lifecycles) over the copy: marks w->sel, counts, and finds the
   span.  No Python, no GIL needed. */
static void
dw_select(DwWork *w)
{
    const Taken *c = w->copy;
    long long n = w->n, hi = w->hi;
    unsigned char *sel = w->sel;
    for (long long i = 0; i < n; i++) {
        int code = c[i].s.code;
        if (code == EV_OP_INLINE)
            sel[i] = c[i].seq < hi;
        else if (code == EV_OP_SUBMIT && c[i].seq < hi)
            dw_add(&w->started, c[i].s.f[0]);
    }
    int any_closed = 0;
    w->have_span = 0;
    for (long long i = 0; i < n; i++) {
        if (c[i].s.code == EV_OP_END && dw_has(&w->started, c[i].s.f[0])) {
            sel[i] = 1;
            dw_add(&w->closed, c[i].s.f[0]);
            long long span = c[i].seq - c[i].s.f[0];
            if (!w->have_span || span > w->span)
                w->span = span;
            w->have_span = any_closed = 1;
        }
    }
    if (any_closed) {
        int any_pin = 0;
        for (long long i = 0; i < n; i++) {
            int code = c[i].s.code;
            if (code == EV_OP_SUBMIT) {
                if (dw_has(&w->closed, c[i].s.f[0]))
                    sel[i] = 1;
            }
            else if (code == EV_BUF_PIN && dw_has(&w->closed, c[i].s.f[1])) {
                sel[i] = 1;
                dw_add(&w->bufs, c[i].s.f[0]);         /* its buffer id */
                any_pin = 1;
            }
        }
        if (any_pin)
            for (long long i = 0; i < n; i++)
                if (c[i].s.code == EV_BUF_RELEASE && dw_has(&w->bufs, c[i].s.f[0]))
                    sel[i] = 1;
    }
    long long count = 0;
    for (long long i = 0; i < n; i++)
        count += sel[i];
    w->count = count;
}

/* The codes and the body of the packed payload, for the selected events (in copy order, which
   is seq order).  Codes of the selection are all in 1..MAX_CODE. */
static void
dw_pack(DwWork *w)
{
    const Taken *c = w->copy;
    long long n = w->n;
    long long per_code[MAX_CODE + 1] = {0};
    for (long long i = 0; i < n; i++)
        if (w->sel[i])
            per_code[c[i].s.code]++;
    /* where each code's int run, t run and string run start in the body */
    size_t int_at[MAX_CODE + 1], t_at[MAX_CODE + 1], s_at[MAX_CODE + 1], off = 0;
    for (int code = 1; code <= MAX_CODE; code++) {
        long long k = per_code[code];
        int_at[code] = off;
        off += (size_t)k * (size_t)(1 + dw_nints(code)) * 8;
        t_at[code] = off;
        off += (size_t)k * 8;
        s_at[code] = off;
        if (STRPOS[code] >= 0)
            off += (size_t)k * 4;
    }
    w->body_len = off;
    w->str_ids[0] = 0;
    w->n_str_ids = 1;
    unsigned char *body = w->body, *codes = w->codes;
    long long j = 0;
    for (long long i = 0; i < n; i++) {
        if (!w->sel[i])
            continue;
        const Slot *sl = &c[i].s;
        int code = sl->code, nints = dw_nints(code);
        codes[j++] = (unsigned char)code;
        unsigned char *p = body + int_at[code];
        p = dw_le64(p, (unsigned long long)c[i].seq);
        for (int k = 0; k < nints; k++)
            p = dw_le64(p, (unsigned long long)sl->f[k]);
        int_at[code] = (size_t)(p - body);
        unsigned long long bits;
        memcpy(&bits, &sl->t, 8);
        dw_le64(body + t_at[code], bits);
        t_at[code] += 8;
        if (STRPOS[code] >= 0) {
            unsigned int id = sl->str, index = 0;
            if (id != 0 && id < (unsigned int)w->nstrings) {   /* else "" (as drain() reads it) */
                index = w->str_index[id];
                if (index == 0) {
                    index = (unsigned int)w->n_str_ids;
                    w->str_index[id] = (unsigned short)index;
                    w->str_ids[w->n_str_ids++] = id;
                }
            }
            unsigned char *q = body + s_at[code];
            q[0] = (unsigned char)index;
            q[1] = (unsigned char)(index >> 8);
            q[2] = (unsigned char)(index >> 16);
            q[3] = (unsigned char)(index >> 24);
            s_at[code] += 4;
        }
    }
}

/* the payload bytes: form, count, codes, string table, body (GIL held: reads m->strings) */
static PyObject *
dw_payload(DwWork *w, PyObject *strings)
{
    int ns = w->n_str_ids;
    PyObject **utf8 = PyMem_Calloc((size_t)ns, sizeof(PyObject *));
    if (utf8 == NULL)
        return PyErr_NoMemory();
    PyObject *out = NULL;
    size_t table_len = 5;
    for (int i = 1; i < ns; i++) {
        PyObject *s = w->str_ids[i] < (unsigned int)PyList_GET_SIZE(strings)
            ? PyList_GET_ITEM(strings, w->str_ids[i]) : EMPTY_STR;
        utf8[i] = PyUnicode_Check(s) ? PyUnicode_AsEncodedString(s, "utf-8", "surrogatepass")
                                     : PyBytes_FromStringAndSize("", 0);
        if (utf8[i] == NULL)
            goto done;
    }
    for (int i = 0; i < ns; i++)
        table_len += 5 + (i ? (size_t)PyBytes_GET_SIZE(utf8[i]) : 0);
    size_t total = 1 + 4 + (size_t)w->count + table_len + w->body_len;
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (out == NULL)
        goto done;
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
    *p++ = 1;                                          /* FORM_PACKED */
    p = dw_be32(p, (unsigned long)w->count);
    memcpy(p, w->codes, (size_t)w->count);
    p += w->count;
    *p++ = 'l';
    p = dw_be32(p, (unsigned long)ns);
    for (int i = 0; i < ns; i++) {
        Py_ssize_t len = i ? PyBytes_GET_SIZE(utf8[i]) : 0;
        *p++ = 's';
        p = dw_be32(p, (unsigned long)len);
        if (len) {
            memcpy(p, PyBytes_AS_STRING(utf8[i]), (size_t)len);
            p += len;
        }
    }
    memcpy(p, w->body, w->body_len);
done:
    for (int i = 1; i < ns; i++)
        Py_XDECREF(utf8[i]);
    PyMem_Free(utf8);
    return out;
}

/* drain_window(start, stop, max_items, window) -> (first_seq, selected, payload, span) */
static PyObject *
core_drain_window(CoreObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    long long start, stop, max_items, window;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "drain_window(start, stop, max_items, window)");
        return NULL;
    }
    if (as_ll(args[0], &start) || as_ll(args[1], &stop) || as_ll(args[2], &max_items)
        || as_ll(args[3], &window))
        return NULL;
    PyObject *strings = m->strings;
    if (strings == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the monitor's string table is gone");
        return NULL;
    }
    long long n, first, kept = range_take(m, max_items, &start, stop, &n, &first);
    if (window < 0)
        window = 0;
    DwWork w;
    memset(&w, 0, sizeof(w));
    Py_ssize_t nstrings = PyList_GET_SIZE(strings);
    if (nstrings > MAX_STRINGS + 1)
        nstrings = MAX_STRINGS + 1;        /* the table is bounded; ids beyond read as "" */
    int release = kept >= DW_RELEASE_MIN;
    if (dw_alloc(&w, kept, nstrings, !release) < 0) {
        dw_free(&w);
        return PyErr_NoMemory();
    }
    range_copy(m, w.copy, first + start, kept, first + n);
    w.hi = first + start + window;
    if (release) {
        Py_BEGIN_ALLOW_THREADS
        dw_select(&w);
        dw_pack(&w);
        Py_END_ALLOW_THREADS
    }
    else {
        dw_select(&w);
        dw_pack(&w);
    }
    PyObject *payload = NULL, *span = NULL, *res = NULL;
    if (w.count) {
        Py_INCREF(strings);                /* held: building objects may run the GC */
        payload = dw_payload(&w, strings);
        Py_DECREF(strings);
        if (payload == NULL)
            goto done;
    }
    else {
        payload = Py_NewRef(Py_None);
    }
    span = w.have_span ? PyLong_FromLongLong(w.span) : Py_NewRef(Py_None);
    if (span != NULL)
        res = Py_BuildValue("(LLOO)", first, w.count, payload, span);
done:
    Py_XDECREF(payload);
    Py_XDECREF(span);
    dw_free(&w);
    return res;
}

#define DRAIN_WINDOW_METHODS                                                                 \
    {"drain_window", (PyCFunction)(void (*)(void))core_drain_window, METH_FASTCALL,          \
     "drain_window(start, stop, max_items, window) -> (first_seq, selected, payload, span):" \
     " take like drain_range(), select the sampler's window of whole lifecycles among the"   \
     " events at positions start..stop-1 (the window is `window` events from start) and"     \
     " pack them as a FORM_PACKED OpEvents payload (None if none); span: the longest end"    \
     " seq - op id of the ops it closed (None if none)."},
