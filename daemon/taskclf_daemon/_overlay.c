/* taskclf_daemon._overlay: the history overlay of one window in C (optional accelerator).
 *
 * push_window(state, window, idle_gap_seconds) does what pipeline/features.py's pure-Python
 * push_window does -- append the window to the user's History, return its 9 overlay values --
 * with the same floats: the same operations in the same order on IEEE doubles (compiled without
 * FP contraction), builtin sum()'s own algorithm for this Python version, and Python's round()
 * itself wherever the fast rounding of _round_to is not certain.
 *
 * It only takes the plain case. Anything else (another type anywhere, an int beyond what a
 * double holds exactly, a History of odd shape) returns NotImplemented BEFORE anything is
 * changed, and the caller runs the Python version, which does what it always did (raise,
 * convert). tests/test_overlay_native.py holds the two equal.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define HISTORY_ROWS 15
#define ROLLING_SHORT 5
#define ROLLING_LONG 15
#define LOOKBACK_US ((int64_t)15 * 60 * 1000000)
#define EXACT_DOUBLE_INT ((int64_t)1 << 53)

static PyObject *array_type; /* array.array */
static PyObject *s_history, *s_session_start_us, *s_values, *s_ts_us, *s_ts, *s_apps, *s_keys, *s_clicks, *s_mouse, *s_round, *s_append;
static PyObject *k_keys, *k_clicks, *k_mouse, *k_app;

/* ---- builtin sum() of floats, as this Python computes it (left to right from 0) --------- */
static double py_sum(const double *v, Py_ssize_t n)
{
#if PY_VERSION_HEX >= 0x030C0000
    /* 3.12+: Neumaier compensated summation (bltinmodule.c, builtin_sum_impl float path) */
    double f = 0.0, c = 0.0;
    for (Py_ssize_t i = 0; i < n; i++) {
        double x = v[i];
        double t = f + x;
        if (fabs(f) >= fabs(x))
            c += (f - t) + x;
        else
            c += (x - t) + f;
        f = t;
    }
    if (c && isfinite(c))
        f += c;
    return f;
#else
    double f = 0.0;
    for (Py_ssize_t i = 0; i < n; i++)
        f += v[i];
    return f;
#endif
}

/* round(x, ndigits) through Python: a new reference */
static PyObject *py_round(double x, int ndigits)
{
    PyObject *f = PyFloat_FromDouble(x);
    if (f == NULL)
        return NULL;
    PyObject *nd = PyLong_FromLong(ndigits);
    if (nd == NULL) {
        Py_DECREF(f);
        return NULL;
    }
    PyObject *r = PyObject_CallMethodOneArg(f, s_round, nd);
    Py_DECREF(nd);
    Py_DECREF(f);
    return r;
}

/* features._round_to: the same float as round(x, ndigits), scale = 10.0 ** ndigits */
static PyObject *round_to(double x, double scale, int ndigits)
{
    double y = x * scale;
    if (-8e12 < y && y < 8e12) {
        double f = floor(y); /* == y // 1.0 for finite y */
        double d = y - f;
        if (d < 0.49) {
            if (f != 0.0)
                return PyFloat_FromDouble(f / scale);
        }
        else if (d > 0.51) {
            f += 1.0;
            if (f != 0.0)
                return PyFloat_FromDouble(f / scale);
        }
    }
    return py_round(x, ndigits);
}

/* features._mean_4dp over v[0..n) (NaN = null); n >= 1 */
static PyObject *mean_4dp(const double *v, Py_ssize_t n)
{
    double s = py_sum(v, n);
    if (s != s) {
        double vals[HISTORY_ROWS];
        Py_ssize_t m = 0;
        for (Py_ssize_t i = 0; i < n; i++)
            if (v[i] == v[i])
                vals[m++] = v[i];
        if (m == 0)
            Py_RETURN_NONE;
        s = py_sum(vals, m);
        return round_to(s / (double)m, 10000.0, 4);
    }
    return round_to(s / (double)n, 10000.0, 4);
}

/* features._delta: cur - prev rounded to 4 dp; None if either is null (NaN) */
static PyObject *delta(int cur_null, double cur, double prev)
{
    if (cur_null || prev != prev)
        Py_RETURN_NONE;
    double d = cur - prev;
    if (isfinite(d) && floor(d) == d) /* d.is_integer() */
        return PyFloat_FromDouble(d);
    return round_to(d, 10000.0, 4);
}

/* a number of the window as features.push_window reads it: None, a float, or an int a double
 * holds exactly (float(v) is then that double). 0 = fine, 1 = decline */
static int read_num(PyObject *v, int *is_null, double *out)
{
    if (v == Py_None) {
        *is_null = 1;
        *out = NAN;
        return 0;
    }
    *is_null = 0;
    if (PyFloat_CheckExact(v)) {
        *out = PyFloat_AS_DOUBLE(v);
        return 0;
    }
    if (PyLong_CheckExact(v)) {
        int overflow = 0;
        long long i = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow || (i == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return 1;
        }
        if (i <= -EXACT_DOUBLE_INT || i >= EXACT_DOUBLE_INT)
            return 1;
        *out = (double)i;
        return 0;
    }
    return 1;
}

/* an exact int that fits int64: 0 = fine, 1 = decline */
static int read_i64(PyObject *v, int64_t *out)
{
    if (!PyLong_CheckExact(v))
        return 1;
    int overflow = 0;
    long long i = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow || (i == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 1;
    }
    *out = (int64_t)i;
    return 0;
}

/* a column of the History: an exact array.array of 8-byte items, length n, format f */
static int column(PyObject *col, Py_ssize_t n, char f, Py_buffer *view)
{
    if ((PyObject *)Py_TYPE(col) != array_type)
        return 1;
    if (PyObject_GetBuffer(col, view, PyBUF_FORMAT | PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        PyErr_Clear();
        return 1;
    }
    if (view->itemsize != 8 || view->format == NULL || view->format[0] != f || view->format[1] != '\0' || view->len != n * 8) {
        PyBuffer_Release(view);
        return 1;
    }
    return 0;
}

static PyObject *decline(void)
{
    Py_RETURN_NOTIMPLEMENTED;
}

#define DROP(o) Py_XDECREF(o)

static PyObject *push_window(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "push_window(state, window, idle_gap_seconds)");
        return NULL;
    }
    PyObject *state = args[0], *w = args[1], *gap = args[2];
    PyObject *hist = NULL, *start_o = NULL, *vals = NULL, *ts_o = NULL;
    PyObject *cols[5] = {NULL, NULL, NULL, NULL, NULL}; /* ts, apps, keys, clicks, mouse */
    PyObject *result = NULL;
    Py_buffer views[4];
    int nviews = 0;

    hist = PyObject_GetAttr(state, s_history);
    if (hist == NULL)
        goto done;
    start_o = PyObject_GetAttr(state, s_session_start_us);
    if (start_o == NULL)
        goto done;
    vals = PyObject_GetAttr(w, s_values);
    if (vals == NULL)
        goto done;
    ts_o = PyObject_GetAttr(w, s_ts_us);
    if (ts_o == NULL)
        goto done;
    PyObject *names[5] = {s_ts, s_apps, s_keys, s_clicks, s_mouse};
    for (int i = 0; i < 5; i++) {
        cols[i] = PyObject_GetAttr(hist, names[i]);
        if (cols[i] == NULL)
            goto done;
    }

    /* ---- everything checked before anything changes: decline = NotImplemented ---------- */
    int64_t ts, start = 0;
    int has_start = start_o != Py_None;
    if (read_i64(ts_o, &ts) || (has_start && read_i64(start_o, &start)))
        goto declined;
    if (!PyDict_CheckExact(vals) || !PyList_CheckExact(cols[1]))
        goto declined;
    PyObject *keys_o = PyDict_GetItemWithError(vals, k_keys);
    PyObject *clicks_o = keys_o ? PyDict_GetItemWithError(vals, k_clicks) : NULL;
    PyObject *mouse_o = clicks_o ? PyDict_GetItemWithError(vals, k_mouse) : NULL;
    PyObject *app = mouse_o ? PyDict_GetItemWithError(vals, k_app) : NULL;
    if (app == NULL) { /* a missing key (or an error): the Python version raises it */
        PyErr_Clear();
        goto declined;
    }
    if (!PyUnicode_CheckExact(app))
        goto declined;
    int keys_null, clicks_null, mouse_null;
    double keys, clicks, mouse;
    if (read_num(keys_o, &keys_null, &keys) || read_num(clicks_o, &clicks_null, &clicks) || read_num(mouse_o, &mouse_null, &mouse))
        goto declined;
    Py_ssize_t n = PyList_GET_SIZE(cols[1]);
    if (n > HISTORY_ROWS)
        goto declined;
    {
        const char fmt[4] = {'q', 'd', 'd', 'd'};
        for (int i = 0; i < 4; i++) {
            if (column(cols[i == 0 ? 0 : i + 1], n, fmt[i], &views[i]))
                goto declined;
            nviews++;
        }
    }
    int64_t *tsv = (int64_t *)views[0].buf;
    double *kv = (double *)views[1].buf, *cv = (double *)views[2].buf, *mv = (double *)views[3].buf;

    /* the session: a gap of idle_gap_seconds * 1_000_000 or more since the last row starts one */
    int new_session = 0;
    if (n) {
        __int128 diff = (__int128)ts - (__int128)tsv[n - 1];
        if (PyFloat_CheckExact(gap)) {
            double g = PyFloat_AS_DOUBLE(gap) * 1000000.0;
            if (diff <= -EXACT_DOUBLE_INT || diff >= EXACT_DOUBLE_INT || g != g)
                goto declined;
            new_session = (double)diff >= g;
        }
        else if (PyLong_CheckExact(gap)) {
            int64_t gi;
            if (read_i64(gap, &gi) || gi > INT64_MAX / 1000000 || gi < INT64_MIN / 1000000)
                goto declined;
            new_session = diff >= (__int128)gi * 1000000;
        }
        else
            goto declined;
    }
    int64_t new_start = (new_session || !has_start) ? ts : start;
    __int128 since = (__int128)ts - (__int128)new_start;
    if (since <= -EXACT_DOUBLE_INT || since >= EXACT_DOUBLE_INT)
        goto declined;
    __int128 cutoff = (__int128)ts - LOOKBACK_US;

    /* ---- the overlay values that read the history before the push -------------------- */
    PyObject *d_keys = NULL, *d_clicks = NULL, *d_mouse = NULL;
    if (n) {
        d_keys = delta(keys_null, keys, kv[n - 1]);
        d_clicks = d_keys ? delta(clicks_null, clicks, cv[n - 1]) : NULL;
        d_mouse = d_clicks ? delta(mouse_null, mouse, mv[n - 1]) : NULL;
        if (d_mouse == NULL) { /* only MemoryError and the like: nothing changed yet */
            DROP(d_keys);
            DROP(d_clicks);
            goto done;
        }
    }
    else {
        d_keys = Py_NewRef(Py_None);
        d_clicks = Py_NewRef(Py_None);
        d_mouse = Py_NewRef(Py_None);
    }

    /* ---- the push: in place when full (the length stays HISTORY_ROWS), else appended ---- */
    if (new_session || !has_start) {
        PyObject *ts_new = PyLong_FromLongLong(ts);
        if (ts_new == NULL || PyObject_SetAttr(state, s_session_start_us, ts_new) < 0) {
            DROP(ts_new);
            DROP(d_keys);
            DROP(d_clicks);
            DROP(d_mouse);
            goto done;
        }
        Py_DECREF(ts_new);
    }
    Py_INCREF(app);
    PyUnicode_InternInPlace(&app); /* sys.intern(app_id) */
    double nk = keys_null ? NAN : keys, nc = clicks_null ? NAN : clicks, nm = mouse_null ? NAN : mouse;
    Py_ssize_t len;
    if (n == HISTORY_ROWS) {
        memmove(tsv, tsv + 1, (n - 1) * 8);
        memmove(kv, kv + 1, (n - 1) * 8);
        memmove(cv, cv + 1, (n - 1) * 8);
        memmove(mv, mv + 1, (n - 1) * 8);
        tsv[n - 1] = ts;
        kv[n - 1] = nk;
        cv[n - 1] = nc;
        mv[n - 1] = nm;
        PyObject **items = ((PyListObject *)cols[1])->ob_item;
        PyObject *old = items[0];
        memmove(items, items + 1, (n - 1) * sizeof(PyObject *));
        items[n - 1] = app; /* the reference taken above */
        Py_DECREF(old);
        len = n;
    }
    else {
        for (int i = 0; i < nviews; i++)
            PyBuffer_Release(&views[i]);
        nviews = 0;
        PyObject *ts_new = PyLong_FromLongLong(ts);
        PyObject *vk = PyFloat_FromDouble(nk), *vc = PyFloat_FromDouble(nc), *vm = PyFloat_FromDouble(nm);
        int bad = ts_new == NULL || vk == NULL || vc == NULL || vm == NULL;
        PyObject *news[5] = {ts_new, app, vk, vc, vm};
        for (int i = 0; i < 5 && !bad; i++) {
            if (i == 1)
                bad = PyList_Append(cols[1], app) < 0;
            else {
                PyObject *r = PyObject_CallMethodOneArg(cols[i], s_append, news[i]);
                bad = r == NULL;
                DROP(r);
            }
        }
        DROP(ts_new);
        Py_DECREF(app);
        DROP(vk);
        DROP(vc);
        DROP(vm);
        if (bad) {
            DROP(d_keys);
            DROP(d_clicks);
            DROP(d_mouse);
            goto done;
        }
        len = n + 1;
        const char fmt[4] = {'q', 'd', 'd', 'd'};
        for (int i = 0; i < 4; i++) {
            if (column(cols[i == 0 ? 0 : i + 1], len, fmt[i], &views[i])) {
                DROP(d_keys);
                DROP(d_clicks);
                DROP(d_mouse);
                PyErr_SetString(PyExc_RuntimeError, "History column changed shape during push");
                goto done;
            }
            nviews++;
        }
        tsv = (int64_t *)views[0].buf;
        kv = (double *)views[1].buf;
        mv = (double *)views[3].buf;
    }

    /* ---- the overlay values that read the history after the push --------------------- */
    int all_recent = 1;
    for (Py_ssize_t i = 0; i < len; i++)
        if ((__int128)tsv[i] < cutoff) {
            all_recent = 0;
            break;
        }
    PyObject **apps = ((PyListObject *)cols[1])->ob_item;
    long n_apps = 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        if (!all_recent && (__int128)tsv[i] < cutoff)
            continue;
        PyObject *a = apps[i];
        int seen = 0;
        for (Py_ssize_t j = 0; j < i && !seen; j++) {
            if (!all_recent && (__int128)tsv[j] < cutoff)
                continue;
            PyObject *b = apps[j];
            if (a == b)
                seen = 1;
            else if (PyUnicode_CheckExact(a) && PyUnicode_CheckExact(b) && PyUnicode_CHECK_INTERNED(a) && PyUnicode_CHECK_INTERNED(b))
                seen = 0; /* two interned strings are equal only if they are one object */
            else {
                int eq = PyObject_RichCompareBool(a, b, Py_EQ);
                if (eq < 0) {
                    DROP(d_keys);
                    DROP(d_clicks);
                    DROP(d_mouse);
                    goto done;
                }
                seen = eq;
            }
        }
        n_apps += !seen;
    }
    Py_ssize_t s_n = len < ROLLING_SHORT ? len : ROLLING_SHORT, l_n = len < ROLLING_LONG ? len : ROLLING_LONG;
    PyObject *ks = mean_4dp(kv + len - s_n, s_n);
    PyObject *kl = ks ? mean_4dp(kv + len - l_n, l_n) : NULL;
    PyObject *ms = kl ? mean_4dp(mv + len - s_n, s_n) : NULL;
    PyObject *ml = ms ? mean_4dp(mv + len - l_n, l_n) : NULL;
    double minutes = (double)(int64_t)since / 60000000.0;
    PyObject *mins = NULL;
    if (ml != NULL)
        mins = (isfinite(minutes) && floor(minutes) == minutes) ? PyFloat_FromDouble(minutes) : round_to(minutes, 100.0, 2);
    PyObject *switches = mins ? PyLong_FromLong(n_apps > 1 ? n_apps - 1 : 0) : NULL;
    if (switches == NULL) {
        DROP(ks);
        DROP(kl);
        DROP(ms);
        DROP(ml);
        DROP(mins);
        DROP(d_keys);
        DROP(d_clicks);
        DROP(d_mouse);
        goto done;
    }
    result = PyTuple_Pack(9, switches, ks, kl, ms, ml, d_keys, d_clicks, d_mouse, mins);
    Py_DECREF(switches);
    Py_DECREF(ks);
    Py_DECREF(kl);
    Py_DECREF(ms);
    Py_DECREF(ml);
    Py_DECREF(mins);
    Py_DECREF(d_keys);
    Py_DECREF(d_clicks);
    Py_DECREF(d_mouse);
    goto done;

declined:
    result = decline();
done:
    for (int i = 0; i < nviews; i++)
        PyBuffer_Release(&views[i]);
    for (int i = 0; i < 5; i++)
        DROP(cols[i]);
    DROP(hist);
    DROP(start_o);
    DROP(vals);
    DROP(ts_o);
    return result;
}

static PyMethodDef methods[] = {
    {"push_window", (PyCFunction)(void (*)(void))push_window, METH_FASTCALL,
     "push_window(state, window, idle_gap_seconds) -> overlay tuple, or NotImplemented (nothing changed: run the Python version)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "taskclf_daemon._overlay", "The history overlay in C (see _overlay.c).", -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__overlay(void)
{
    PyObject *arr = PyImport_ImportModule("array");
    if (arr == NULL)
        return NULL;
    array_type = PyObject_GetAttrString(arr, "array");
    Py_DECREF(arr);
    if (array_type == NULL)
        return NULL;
#define NAME(var, text) \
    if ((var = PyUnicode_InternFromString(text)) == NULL) \
        return NULL;
    NAME(s_history, "history");
    NAME(s_session_start_us, "session_start_us");
    NAME(s_values, "values");
    NAME(s_ts_us, "ts_us");
    NAME(s_ts, "ts");
    NAME(s_apps, "apps");
    NAME(s_keys, "keys");
    NAME(s_clicks, "clicks");
    NAME(s_mouse, "mouse");
    NAME(s_round, "__round__");
    NAME(s_append, "append");
    NAME(k_keys, "keys_per_min");
    NAME(k_clicks, "clicks_per_min");
    NAME(k_mouse, "mouse_distance");
    NAME(k_app, "app_id");
    /* the constants it was compiled with: native.load leaves a build out whose constants differ */
    PyObject *m = PyModule_Create(&module);
    if (m == NULL || PyModule_AddIntConstant(m, "HISTORY_ROWS", (long)HISTORY_ROWS) < 0 || PyModule_AddIntConstant(m, "ROLLING_SHORT", (long)ROLLING_SHORT) < 0 || PyModule_AddIntConstant(m, "ROLLING_LONG", (long)ROLLING_LONG) < 0 || PyModule_AddIntConstant(m, "LOOKBACK_US", (long)LOOKBACK_US) < 0) {
        Py_XDECREF(m);
        return NULL;
    }
    return m;
}
