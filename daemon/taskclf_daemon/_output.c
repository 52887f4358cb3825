/* taskclf_daemon._output: a batch of WindowPrediction records spliced in C (optional accelerator).
 *
 * encode_rows(...) does what the row loop of pipeline/output.py's OutputEncoder.encode does in
 * Python -- the record template filled with each row's pieces -- with the same bytes: the numbers
 * arrive already formatted by orjson, strings the C side cannot be sure of go through the
 * encoder's own string function (orjson.dumps), and timestamps given as epoch microseconds are
 * formatted as timeutil.format_ts_us formats them. Anything it does not expect (a type, a
 * timestamp outside 1970..2199) returns NotImplemented and the Python loop runs; it changes
 * nothing, so giving up half way is harmless. tests/pipeline/test_output.py holds the two equal.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define N_PIECES 14 /* literal text around the 13 slots of the template */
#define MAX_TS_US INT64_C(7258118400000000) /* 2200-01-01T00:00:00Z (timeutil.MAX_TS_US) */

typedef struct {
    char *buf;
    Py_ssize_t len, cap;
} Buf;

static int put(Buf *b, const char *s, Py_ssize_t n)
{
    if (b->len + n > b->cap) {
        Py_ssize_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + n)
            cap *= 2;
        char *nb = PyMem_Realloc(b->buf, cap);
        if (nb == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        b->buf = nb;
        b->cap = cap;
    }
    memcpy(b->buf + b->len, s, n);
    b->len += n;
    return 0;
}

static int put_bytes(Buf *b, PyObject *o)
{
    if (!PyBytes_CheckExact(o))
        return 1;
    return put(b, PyBytes_AS_STRING(o), PyBytes_GET_SIZE(o));
}

/* days since 1970-01-01 -> civil date (proleptic Gregorian) */
static void civil(int64_t z, int *y, int *m, int *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t yy = yoe + era * 400;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = (int)(yy + (*m <= 2));
}

/* timeutil.format_ts_us for 0 <= us < MAX_TS_US: YYYY-MM-DDTHH:MM:SS[.ffffff]Z; 1 = decline */
static int put_ts(Buf *b, PyObject *o)
{
    if (PyUnicode_CheckExact(o)) { /* a formatted timestamp: as it is (ASCII, no escapes) */
        if (!PyUnicode_IS_ASCII(o))
            return 1;
        const char *s = (const char *)PyUnicode_DATA(o);
        Py_ssize_t n = PyUnicode_GET_LENGTH(o);
        for (Py_ssize_t i = 0; i < n; i++)
            if (s[i] == '"' || s[i] == '\\' || (unsigned char)s[i] < 0x20)
                return 1;
        return put(b, s, n);
    }
    if (!PyLong_CheckExact(o))
        return 1;
    int overflow = 0;
    long long us = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow || (us == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 1;
    }
    if (us < 0 || us >= MAX_TS_US)
        return 1;
    int64_t days = us / INT64_C(86400000000), rem = us % INT64_C(86400000000);
    int y, mo, d;
    civil(days, &y, &mo, &d);
    int64_t secs = rem / 1000000, frac = rem % 1000000;
    char s[40];
    int n;
    if (frac)
        n = snprintf(s, sizeof s, "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", y, mo, d, (int)(secs / 3600), (int)(secs / 60 % 60), (int)(secs % 60), (int)frac);
    else
        n = snprintf(s, sizeof s, "%04d-%02d-%02dT%02d:%02d:%02dZ", y, mo, d, (int)(secs / 3600), (int)(secs / 60 % 60), (int)(secs % 60));
    return put(b, s, n);
}

/* a JSON string: plain ASCII without '"', '\\' or control characters is written as it is,
 * anything else goes through str_fn (orjson.dumps, memoised by the encoder) */
static int put_str(Buf *b, PyObject *o, PyObject *str_fn)
{
    if (PyUnicode_CheckExact(o) && PyUnicode_IS_ASCII(o)) {
        const char *s = (const char *)PyUnicode_DATA(o);
        Py_ssize_t n = PyUnicode_GET_LENGTH(o);
        int plain = 1;
        for (Py_ssize_t i = 0; i < n && plain; i++)
            plain = !(s[i] == '"' || s[i] == '\\' || (unsigned char)s[i] < 0x20 || s[i] == 0x7f);
        if (plain)
            return put(b, "\"", 1) || put(b, s, n) || put(b, "\"", 1) ? -1 : 0;
    }
    PyObject *r = PyObject_CallOneArg(str_fn, o);
    if (r == NULL)
        return -1;
    int rc = put_bytes(b, r);
    Py_DECREF(r);
    return rc;
}

/* names[key] as bytes (the encoder's dict of the batch's few names) */
static int put_name(Buf *b, PyObject *names, PyObject *key)
{
    PyObject *v = PyDict_GetItemWithError(names, key);
    if (v == NULL) {
        if (PyErr_Occurred())
            PyErr_Clear();
        return 1;
    }
    return put_bytes(b, v);
}

/* the record built in b becomes out[i]: 0, or -1 (an error is set) */
static int take_row(PyObject *out, Py_ssize_t i, Buf *b)
{
    PyObject *rec = PyBytes_FromStringAndSize(b->buf, b->len);
    if (rec == NULL)
        return -1;
    PyList_SET_ITEM(out, i, rec);
    return 0;
}

/* out when every row was built (rc 0); NotImplemented when one was declined (1); NULL on an
 * error (-1). Frees b's buffer. */
static PyObject *finish(PyObject *out, Buf *b, int rc)
{
    PyMem_Free(b->buf);
    if (rc == 0)
        return out;
    Py_DECREF(out);
    if (rc < 0)
        return NULL;
    Py_RETURN_NOTIMPLEMENTED;
}

static int list_of(PyObject *o, Py_ssize_t n)
{
    return PyList_CheckExact(o) && PyList_GET_SIZE(o) == n;
}

/* encode_rows(pieces, uids, ts, core_ids, core_names, core, conf, rejected, mapped, mp,
 *             smoothed, scopes, kinds, versions, names, str_fn) -> list[bytes] | NotImplemented
 * kinds None = "identity" for every row; versions None = null for every row */
static PyObject *encode_rows(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 16) {
        PyErr_SetString(PyExc_TypeError, "encode_rows takes 16 arguments");
        return NULL;
    }
    PyObject *pieces = args[0], *uids = args[1], *ts = args[2], *core_ids = args[3], *core_names = args[4], *core = args[5], *conf = args[6], *rejected = args[7], *mapped = args[8], *mp = args[9],
             *smoothed = args[10], *scopes = args[11], *kinds = args[12], *versions = args[13], *names = args[14], *str_fn = args[15];
    if (!PyTuple_CheckExact(pieces) || PyTuple_GET_SIZE(pieces) != N_PIECES || !PyTuple_CheckExact(core_names) || !PyDict_CheckExact(names) || !PyList_CheckExact(uids))
        Py_RETURN_NOTIMPLEMENTED;
    Py_ssize_t n = PyList_GET_SIZE(uids);
    PyObject *cols[] = {ts, core_ids, core, conf, rejected, mapped, mp, smoothed, scopes};
    for (size_t i = 0; i < sizeof cols / sizeof cols[0]; i++)
        if (!list_of(cols[i], n))
            Py_RETURN_NOTIMPLEMENTED;
    if ((kinds != Py_None && !list_of(kinds, n)) || (versions != Py_None && !list_of(versions, n)))
        Py_RETURN_NOTIMPLEMENTED;
    const char *pc[N_PIECES];
    Py_ssize_t pn[N_PIECES];
    for (int i = 0; i < N_PIECES; i++) {
        PyObject *p = PyTuple_GET_ITEM(pieces, i);
        if (!PyBytes_CheckExact(p))
            Py_RETURN_NOTIMPLEMENTED;
        pc[i] = PyBytes_AS_STRING(p);
        pn[i] = PyBytes_GET_SIZE(p);
    }
    Py_ssize_t n_names = PyTuple_GET_SIZE(core_names);
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    Buf b = {NULL, 0, 0};
    int rc = 0; /* 0 fine, 1 decline, -1 error */
    for (Py_ssize_t i = 0; i < n && rc == 0; i++) {
        b.len = 0;
        PyObject *cid = PyList_GET_ITEM(core_ids, i);
        long long id = PyLong_CheckExact(cid) ? PyLong_AsLongLong(cid) : -1;
        if (id < 0 || id >= n_names) {
            PyErr_Clear();
            rc = 1;
            break;
        }
        char idtext[24];
        int idn = snprintf(idtext, sizeof idtext, "%lld", id);
        PyObject *rej = PyList_GET_ITEM(rejected, i);
        if (rej != Py_True && rej != Py_False) {
            rc = 1;
            break;
        }
#define STEP(expr) \
    if (rc == 0) \
        rc = (expr);
        STEP(put(&b, pc[0], pn[0]));
        STEP(put_str(&b, PyList_GET_ITEM(uids, i), str_fn));
        STEP(put(&b, pc[1], pn[1]));
        STEP(put_ts(&b, PyList_GET_ITEM(ts, i)));
        STEP(put(&b, pc[2], pn[2]));
        STEP(put(&b, idtext, idn));
        STEP(put(&b, pc[3], pn[3]));
        STEP(put_bytes(&b, PyTuple_GET_ITEM(core_names, id)));
        STEP(put(&b, pc[4], pn[4]));
        STEP(put_bytes(&b, PyList_GET_ITEM(core, i)));
        STEP(put(&b, pc[5], pn[5]));
        STEP(put_bytes(&b, PyList_GET_ITEM(conf, i)));
        STEP(put(&b, pc[6], pn[6]));
        STEP(rej == Py_True ? put(&b, "true", 4) : put(&b, "false", 5));
        STEP(put(&b, pc[7], pn[7]));
        STEP(put_name(&b, names, PyList_GET_ITEM(mapped, i)));
        STEP(put(&b, pc[8], pn[8]));
        STEP(put_bytes(&b, PyList_GET_ITEM(mp, i)));
        STEP(put(&b, pc[9], pn[9]));
        STEP(put_name(&b, names, PyList_GET_ITEM(smoothed, i)));
        STEP(put(&b, pc[10], pn[10]));
        STEP(put_name(&b, names, PyList_GET_ITEM(scopes, i)));
        STEP(put(&b, pc[11], pn[11]));
        STEP(kinds == Py_None ? put(&b, "\"identity\"", 10) : put_name(&b, names, PyList_GET_ITEM(kinds, i)));
        STEP(put(&b, pc[12], pn[12]));
        if (rc == 0) {
            PyObject *v = versions == Py_None ? Py_None : PyList_GET_ITEM(versions, i);
            rc = v == Py_None ? put(&b, "null", 4) : put_str(&b, v, str_fn);
        }
        STEP(put(&b, pc[13], pn[13]));
#undef STEP
        if (rc == 0)
            rc = take_row(out, i, &b);
    }
    return finish(out, &b, rc);
}

/* splice_fields(pieces, rows) -> list[bytes] | NotImplemented: each row's comma-separated fields
 * between the pieces (len(pieces) = fields + 1): ``pieces[0] % tuple(row.split(b","))`` of a
 * template without other directives, as OutputEncoder's identity mapped_probs does */
static PyObject *splice_fields(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "splice_fields(pieces, rows)");
        return NULL;
    }
    PyObject *pieces = args[0], *rows = args[1];
    if (!PyTuple_CheckExact(pieces) || PyTuple_GET_SIZE(pieces) < 1 || !PyList_CheckExact(rows))
        Py_RETURN_NOTIMPLEMENTED;
    Py_ssize_t np_ = PyTuple_GET_SIZE(pieces), n = PyList_GET_SIZE(rows);
    for (Py_ssize_t k = 0; k < np_; k++)
        if (!PyBytes_CheckExact(PyTuple_GET_ITEM(pieces, k)))
            Py_RETURN_NOTIMPLEMENTED;
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    Buf b = {NULL, 0, 0};
    int rc = 0;
    for (Py_ssize_t i = 0; i < n && rc == 0; i++) {
        PyObject *row = PyList_GET_ITEM(rows, i);
        if (!PyBytes_CheckExact(row)) {
            rc = 1;
            break;
        }
        const char *s = PyBytes_AS_STRING(row), *end = s + PyBytes_GET_SIZE(row);
        b.len = 0;
        Py_ssize_t k = 0;
        while (rc == 0) {
            const char *comma = memchr(s, ',', end - s);
            const char *stop = comma ? comma : end;
            PyObject *p = PyTuple_GET_ITEM(pieces, k);
            rc = put(&b, PyBytes_AS_STRING(p), PyBytes_GET_SIZE(p));
            if (rc == 0)
                rc = put(&b, s, stop - s);
            k++;
            if (comma == NULL)
                break;
            if (k >= np_ - 1) { /* more fields than slots */
                rc = 1;
                break;
            }
            s = comma + 1;
        }
        if (rc == 0 && k != np_ - 1) /* fewer fields than slots */
            rc = 1;
        if (rc == 0) {
            PyObject *p = PyTuple_GET_ITEM(pieces, np_ - 1);
            rc = put(&b, PyBytes_AS_STRING(p), PyBytes_GET_SIZE(p));
        }
        if (rc == 0)
            rc = take_row(out, i, &b);
    }
    return finish(out, &b, rc);
}

static PyMethodDef methods[] = {
    {"splice_fields", (PyCFunction)(void (*)(void))splice_fields, METH_FASTCALL, "Each row's comma-separated fields between the pieces (see _output.c), or NotImplemented."},
    {"encode_rows", (PyCFunction)(void (*)(void))encode_rows, METH_FASTCALL, "The rows of OutputEncoder.encode (see _output.c), or NotImplemented."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "taskclf_daemon._output", "WindowPrediction records spliced in C (see _output.c).", -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__output(void)
{
    /* the constants it was compiled with: native.load leaves a build out whose constants differ */
    PyObject *m = PyModule_Create(&module);
    if (m == NULL || PyModule_AddIntConstant(m, "MAX_TS_US", (long)MAX_TS_US) < 0) {
        Py_XDECREF(m);
        return NULL;
    }
    return m;
}
