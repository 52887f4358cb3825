/* taskclf_daemon._timestamps: the usual input timestamp parsed in C (optional accelerator).
 *
 * parse_utc(s) reads the one form agents send -- exactly "YYYY-MM-DDTHH:MM:SSZ" -- and returns
 * timeutil.parse_ts_us(s), epoch microseconds; for anything else (another form, an invalid
 * date, an instant outside 1970..2199) it returns None and the caller runs parse_ts_us, which
 * accepts or refuses as it always did. tests/test_timestamps_native.py holds the two equal.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define MAX_TS_US INT64_C(7258118400000000) /* 2200-01-01T00:00:00Z (timeutil.MAX_TS_US) */

/* days since 1970-01-01 of a proleptic Gregorian date */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 1;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

static PyObject *parse_utc(PyObject *self, PyObject *arg)
{
    (void)self;
    if (!PyUnicode_CheckExact(arg) || !PyUnicode_IS_ASCII(arg) || PyUnicode_GET_LENGTH(arg) != 20)
        Py_RETURN_NONE;
    const char *s = (const char *)PyUnicode_DATA(arg);
    int y, mo, d, h, mi, se;
    if (s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' || s[19] != 'Z')
        Py_RETURN_NONE;
    if (digits(s, 4, &y) || digits(s + 5, 2, &mo) || digits(s + 8, 2, &d) || digits(s + 11, 2, &h) || digits(s + 14, 2, &mi) || digits(s + 17, 2, &se))
        Py_RETURN_NONE;
    static const int mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (y < 1 || mo < 1 || mo > 12 || d < 1 || h > 23 || mi > 59 || se > 59)
        Py_RETURN_NONE;
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (d > mdays[mo - 1] + (mo == 2 && leap))
        Py_RETURN_NONE;
    int64_t us = ((days_from_civil(y, mo, d) * 24 + h) * 60 + mi) * 60 + se;
    us *= 1000000;
    if (us < 0 || us >= MAX_TS_US)
        Py_RETURN_NONE;
    return PyLong_FromLongLong(us);
}

static PyMethodDef methods[] = {
    {"parse_utc", parse_utc, METH_O, "parse_utc(s) -> epoch microseconds of an exact 'YYYY-MM-DDTHH:MM:SSZ' in 1970..2199, else None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "taskclf_daemon._timestamps", "The usual input timestamp parsed in C (see _timestamps.c).", -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__timestamps(void)
{
    /* the constants it was compiled with: native.load leaves a build out whose constants differ */
    PyObject *m = PyModule_Create(&module);
    if (m == NULL || PyModule_AddIntConstant(m, "MAX_TS_US", (long)MAX_TS_US) < 0) {
        Py_XDECREF(m);
        return NULL;
    }
    return m;
}
