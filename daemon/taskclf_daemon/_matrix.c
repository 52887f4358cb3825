/* taskclf_daemon._matrix: a batch's model input matrix filled in C (optional accelerator).
 *
 * fill(plan, windows, overlays, out) writes what pipeline/matrix.py's columnar path computes --
 * per column in feature order: a plain field's value, an overlay value, or a categorical code;
 * None (and NaN) -> 0.0, True/False -> 1.0/0.0, a number -> float(number) -- into ``out``, a
 * C-contiguous float64 buffer of len(windows) x len(plan). Anything else (a missing field, a
 * string where a number belongs, a category that is not a str, an int no double holds) returns
 * False with ``out`` partly written, and the caller runs the Python paths, which decide (and
 * raise) as they always did. tests/pipeline/test_matrix.py holds the two equal.
 *
 * plan: a tuple with one entry per column: (0, field name) a plain field, (1, overlay index) an
 * overlay value, (2, field name, codes dict, unknown code) a categorical field, (3,) a
 * categorical field without a vocabulary (-1.0).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>

static PyObject *s_values;

/* float(v) of a cell as the columnar path converts it; 0 = fine, 1 = decline */
static int cell(PyObject *v, double *out)
{
    if (v == Py_None) {
        *out = 0.0;
        return 0;
    }
    double x;
    if (PyFloat_CheckExact(v))
        x = PyFloat_AS_DOUBLE(v);
    else if (v == Py_True)
        x = 1.0;
    else if (v == Py_False)
        x = 0.0;
    else if (PyLong_CheckExact(v)) {
        x = PyLong_AsDouble(v); /* float(int): correctly rounded; OverflowError -> decline */
        if (x == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return 1;
        }
    }
    else
        return 1;
    *out = x != x ? 0.0 : x; /* the columnar path turns every NaN cell into 0.0 */
    return 0;
}

static PyObject *fill(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "fill(plan, windows, overlays, out)");
        return NULL;
    }
    PyObject *plan = args[0], *windows = args[1], *overlays = args[2], *out = args[3];
    if (!PyTuple_CheckExact(plan) || !PyList_CheckExact(windows) || !PyList_CheckExact(overlays) || PyList_GET_SIZE(windows) != PyList_GET_SIZE(overlays))
        Py_RETURN_FALSE;
    Py_ssize_t n = PyList_GET_SIZE(windows), width = PyTuple_GET_SIZE(plan);
    Py_buffer view;
    if (PyObject_GetBuffer(out, &view, PyBUF_WRITABLE | PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    int ok = view.itemsize == 8 && view.format != NULL && (view.format[0] == 'd' || (view.format[0] == '<' && view.format[1] == 'd')) && view.len == n * width * 8;
    double *m = (double *)view.buf;
    for (Py_ssize_t i = 0; i < n && ok; i++) {
        PyObject *vals = PyObject_GetAttr(PyList_GET_ITEM(windows, i), s_values);
        PyObject *ov = PyList_GET_ITEM(overlays, i);
        if (vals == NULL) {
            PyErr_Clear();
            ok = 0;
            break;
        }
        if (!PyDict_CheckExact(vals) || !PyTuple_CheckExact(ov)) {
            Py_DECREF(vals);
            ok = 0;
            break;
        }
        double *row = m + i * width;
        for (Py_ssize_t j = 0; j < width && ok; j++) {
            PyObject *item = PyTuple_GET_ITEM(plan, j);
            long kind = PyLong_AsLong(PyTuple_GET_ITEM(item, 0));
            if (kind == 0) {
                PyObject *v = PyDict_GetItemWithError(vals, PyTuple_GET_ITEM(item, 1));
                ok = v != NULL && cell(v, &row[j]) == 0;
            }
            else if (kind == 1) {
                Py_ssize_t k = PyLong_AsSsize_t(PyTuple_GET_ITEM(item, 1));
                ok = k >= 0 && k < PyTuple_GET_SIZE(ov) && cell(PyTuple_GET_ITEM(ov, k), &row[j]) == 0;
            }
            else if (kind == 2) {
                PyObject *v = PyDict_GetItemWithError(vals, PyTuple_GET_ITEM(item, 1));
                if (v == NULL || !PyUnicode_CheckExact(v)) { /* str(v) of another type: Python decides */
                    ok = 0;
                    break;
                }
                PyObject *code = PyDict_GetItemWithError(PyTuple_GET_ITEM(item, 2), v);
                if (code == NULL && PyErr_Occurred()) {
                    ok = 0;
                    break;
                }
                ok = cell(code != NULL ? code : PyTuple_GET_ITEM(item, 3), &row[j]) == 0;
            }
            else
                row[j] = -1.0;
        }
        Py_DECREF(vals);
    }
    PyBuffer_Release(&view);
    if (PyErr_Occurred())
        PyErr_Clear();
    if (ok)
        Py_RETURN_TRUE;
    Py_RETURN_FALSE;
}

static PyMethodDef methods[] = {
    {"fill", (PyCFunction)(void (*)(void))fill, METH_FASTCALL, "fill(plan, windows, overlays, out) -> True, or False: the Python paths decide (see _matrix.c)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "taskclf_daemon._matrix", "The model input matrix filled in C (see _matrix.c).", -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__matrix(void)
{
    if ((s_values = PyUnicode_InternFromString("values")) == NULL)
        return NULL;
    return PyModule_Create(&module);
}
