/* Backend objects: a Python handle on one core backend, plus the error and
 * report plumbing from core messages to Python exceptions and warnings. */
#include "binding.h"

#include <structmember.h>

#include <errno.h>
#include <string.h>

PyObject *PaExc_CoherencyWarning;
PyObject *PaExc_CoherencyError;

PyObject *pa_py_raise(int rc, const pa_err *err)
{
    int code = -rc;
    switch (code) {
    case ENOMEM:
        PyErr_SetString(PyExc_MemoryError, err->msg);
        break;
    case EINVAL:
    case EFAULT:
    case ERANGE:
        PyErr_SetString(PyExc_ValueError, err->msg);
        break;
    case ENOTSUP:
        PyErr_SetString(PyExc_NotImplementedError, err->msg);
        break;
    case EBUSY:
        PyErr_SetString(PyExc_BlockingIOError, err->msg);
        break;
    case ECHILD: /* a backend inherited through fork() */
        PyErr_SetString(PyExc_RuntimeError, err->msg);
        break;
    default: {
        /* OSError(errno, msg) picks the subclass: PermissionError, FileNotFoundError ... */
        PyObject *args = Py_BuildValue("(is)", code, err->msg);
        if (args != NULL) {
            PyErr_SetObject(PyExc_OSError, args);
            Py_DECREF(args);
        }
    }
    }
    return NULL;
}

int pa_py_report(const BackendObject *b, int rc, const pa_err *err)
{
    (void)b;
    if (rc >= 2) {
        PyErr_SetString(PaExc_CoherencyError, err->msg);
        return -1;
    }
    return PyErr_WarnEx(PaExc_CoherencyWarning, err->msg, 1);
}

const char *pa_py_cstr(PyObject *s, const char *what)
{
    Py_ssize_t n;
    const char *c = PyUnicode_AsUTF8AndSize(s, &n);
    if (c != NULL && strlen(c) != (size_t)n) {
        PyErr_Format(PyExc_ValueError, "%s must not contain a NUL character: %R", what, s);
        return NULL;
    }
    return c;
}

void pa_py_backend_settle(BackendObject *b)
{
    if (b->closing && b->be != NULL && b->be->buffers == 0 && b->pins == 0) {
        pa_backend *be = b->be;
        b->be = NULL;
        pa_close(be);
    }
}

/* str(value) for the core's option parser; bools as 1/0 */
static PyObject *pa_option_text(PyObject *v)
{
    if (PyBool_Check(v)) {
        return PyUnicode_FromString(v == Py_True ? "1" : "0");
    }
    if (PyLong_Check(v) || PyUnicode_Check(v)) {
        return PyObject_Str(v);
    }
    if (PyIndex_Check(v)) {
        PyObject *i = PyNumber_Index(v);
        PyObject *s = i != NULL ? PyObject_Str(i) : NULL;
        Py_XDECREF(i);
        return s;
    }
    PyErr_Format(PyExc_TypeError, "backend options take str, int or bool values, not %.100s",
                 Py_TYPE(v)->tp_name);
    return NULL;
}

PyObject *pa_py_backend_open(PyObject *spec, PyObject *kwargs)
{
    Py_ssize_t n = kwargs != NULL ? PyDict_Size(kwargs) : 0;
    pa_option *opts = NULL;
    PyObject *texts = NULL, *result = NULL;
    BackendObject *self = NULL;
    pa_backend *be = NULL;
    pa_err err;
    int check = 0;

    if (!PyUnicode_Check(spec)) {
        PyErr_Format(PyExc_TypeError, "backend spec must be a str such as 'sim', not %.100s",
                     Py_TYPE(spec)->tp_name);
        return NULL;
    }
    const char *cspec = pa_py_cstr(spec, "a backend spec");
    if (cspec == NULL) {
        return NULL;
    }
    opts = PyMem_Calloc((size_t)n + 1, sizeof(*opts));
    texts = PyList_New(0);
    if (opts == NULL || texts == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t pos = 0, i = 0;
    PyObject *key, *value;
    while (kwargs != NULL && PyDict_Next(kwargs, &pos, &key, &value)) {
        if (PyUnicode_Check(key) && PyUnicode_CompareWithASCIIString(key, "cacheable") == 0) {
            unsigned flags;
            if (pa_py_parse_cacheable(value, &flags) < 0) {
                goto done;
            }
            if (flags == 0) {
                continue; /* None: the backend's own default */
            }
        }
        PyObject *text = pa_option_text(value);
        if (text == NULL || PyList_Append(texts, text) < 0) {
            Py_XDECREF(text);
            goto done;
        }
        Py_DECREF(text);
        opts[i].key = pa_py_cstr(key, "a backend option name");
        opts[i].value = opts[i].key != NULL ? pa_py_cstr(text, "a backend option value") : NULL;
        if (opts[i].key == NULL || opts[i].value == NULL) {
            goto done;
        }
        if (strcmp(opts[i].key, "check") == 0) {
            check = strcmp(opts[i].value, "raise") == 0 ? 2 : strcmp(opts[i].value, "warn") == 0;
        }
        i++;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = pa_open(cspec, opts, (size_t)i, &be, &err);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        pa_py_raise(rc, &err);
        goto done;
    }
    self = PyObject_New(BackendObject, &PaBackend_Type);
    if (self == NULL) {
        pa_close(be);
        goto done;
    }
    self->be = be;
    self->ops = be->ops;
    self->check = check;
    self->closing = 0;
    self->pins = 0;
    self->weakreflist = NULL;
    Py_INCREF(spec);
    self->spec = spec;
    result = (PyObject *)self;
done:
    Py_XDECREF(texts);
    PyMem_Free(opts);
    return result;
}

static void backend_dealloc(PyObject *op)
{
    BackendObject *self = (BackendObject *)op;
    /* every Allocation holds a reference, so no block is alive here */
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs(op);
    }
    pa_close(self->be);
    Py_XDECREF(self->spec);
    Py_TYPE(op)->tp_free(op);
}

/* device_read/device_write: a closed backend still serves its live buffers */
static BackendObject *backend_live_or_raise(PyObject *op)
{
    BackendObject *self = (BackendObject *)op;
    if (self->be == NULL) {
        PyErr_Format(PyExc_ValueError,
                     "backend %U is closed and its last buffer is gone; there is no device "
                     "memory left to access",
                     self->spec);
        return NULL;
    }
    return self;
}

static PyObject *backend_allocate(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames)
{
    static const char *const names[] = {"shape", "dtype", "cacheable", "align", "address_bits"};
    PyObject *v[5] = {NULL, NULL, Py_None, Py_None, Py_None};
    if (pa_py_fastargs("allocate", args, nargs, kwnames, names, 2, 5, v, NULL) < 0) {
        return NULL;
    }
    return pa_py_allocate((BackendObject *)op, v[0], v[1], v[2], v[3], v[4]);
}

/* pa_get_info on an open backend, pinned: pa_get_info may release the GIL while
 * it waits for the lock, and another thread may close the backend meanwhile.
 * -1 if it is closed afterwards (info is still filled in). */
static int backend_get_info(BackendObject *self, pa_info *info)
{
    pa_backend *be = self->be;
    self->pins++;
    pa_get_info(be, info);
    self->pins--;
    pa_py_backend_settle(self);
    return self->be == NULL ? -1 : 0;
}

static PyObject *backend_info(PyObject *op, PyObject *unused)
{
    (void)unused;
    BackendObject *self = (BackendObject *)op;
    if (self->be == NULL) {
        return Py_BuildValue("{s:s,s:O,s:i,s:i,s:i,s:i,s:i,s:i,s:O,s:O}", "name",
                             self->ops->name, "spec", self->spec, "total", 0, "used", 0,
                             "requested", 0, "free", 0, "largest_free", 0, "buffers", 0,
                             "coherent", Py_None, "closed", Py_True);
    }
    pa_info info;
    if (backend_get_info(self, &info) < 0) {
        return backend_info(op, unused); /* closed meanwhile: report it closed */
    }
    PyObject *res = Py_BuildValue(
        "{s:s,s:O,s:K,s:K,s:K,s:K,s:K,s:K,s:O,s:O,s:n,s:O,s:s}", "name", self->be->ops->name,
        "spec", self->spec, "total", (unsigned long long)info.total, "used",
        (unsigned long long)info.used, "requested", (unsigned long long)info.requested, "free",
        (unsigned long long)info.free, "largest_free",
        (unsigned long long)info.largest_free, "buffers", (unsigned long long)info.buffers,
        "coherent", info.coherent ? Py_True : Py_False, "cacheable",
        info.cacheable ? Py_True : Py_False, "cache_line_size", (Py_ssize_t)info.line_size,
        "closed", self->closing ? Py_True : Py_False, "check",
        self->check == 2 ? "raise" : self->check == 1 ? "warn" : "off");
    if (res == NULL) {
        return NULL;
    }
    /* the device address range; None where it is only known per allocation */
    PyObject *lo = Py_None, *hi = Py_None, *base = Py_None;
    Py_INCREF(lo);
    Py_INCREF(hi);
    Py_INCREF(base);
    if (info.highest != 0) {
        Py_SETREF(lo, PyLong_FromUnsignedLongLong(info.lowest));
        Py_SETREF(hi, PyLong_FromUnsignedLongLong(info.highest));
    }
    if (self->be->ops->device_access != NULL) {
        Py_SETREF(base, PyLong_FromUnsignedLongLong(info.base_address));
    }
    if (lo == NULL || hi == NULL || base == NULL ||
        PyDict_SetItemString(res, "lowest_address", lo) < 0 ||
        PyDict_SetItemString(res, "highest_address", hi) < 0 ||
        PyDict_SetItemString(res, "base_address", base) < 0) {
        Py_CLEAR(res);
    }
    Py_XDECREF(lo);
    Py_XDECREF(hi);
    Py_XDECREF(base);
    return res;
}

/* private, for tests and the bench: hugepage's zeroing of reused memory */
static PyObject *backend_zeroing(PyObject *op, PyObject *unused)
{
    (void)unused;
    BackendObject *self = (BackendObject *)op;
    if (backend_live_or_raise(op) == NULL) {
        return NULL;
    }
    pa_info info;
    (void)backend_get_info(self, &info); /* closed meanwhile: these are its last figures */
    return Py_BuildValue("{s:K,s:K,s:K}", "pending", (unsigned long long)info.zero_pending,
                         "background", (unsigned long long)info.zero_background, "sync",
                         (unsigned long long)info.zero_sync);
}

static PyObject *backend_close(PyObject *op, PyObject *unused)
{
    (void)unused;
    BackendObject *self = (BackendObject *)op;
    self->closing = 1;
    /* with buffers alive (or a call running without the GIL), the core
     * backend closes when the last of them is gone */
    pa_py_backend_settle(self);
    Py_RETURN_NONE;
}

static PyObject *backend_device_read(PyObject *op, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"device_address", "nbytes", "check", NULL};
    unsigned long long addr;
    Py_ssize_t n;
    int check = 1;
    BackendObject *self = (BackendObject *)op;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Kn|$p:device_read", kwlist, &addr, &n,
                                     &check)) {
        return NULL;
    }
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "device_read: nbytes must not be negative");
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, n);
    if (out == NULL) {
        return NULL;
    }
    /* checked after the allocation: a garbage collection may close us */
    if (backend_live_or_raise(op) == NULL) {
        Py_DECREF(out);
        return NULL;
    }
    pa_err err;
    int rc;
    pa_backend *be = self->be;
    self->pins++; /* close() + the last free cannot close be meanwhile */
    if ((size_t)n >= pa_work_gil_bytes()) {
        Py_BEGIN_ALLOW_THREADS
        rc = pa_sim_device_access(be, addr, PyBytes_AS_STRING(out), (size_t)n, false, &err);
        Py_END_ALLOW_THREADS
    } else {
        /* a short copy keeps the GIL (pa.h); waits for a range still release it */
        rc = pa_sim_device_access(be, addr, PyBytes_AS_STRING(out), (size_t)n, false, &err);
    }
    self->pins--;
    pa_py_backend_settle(self);
    /* check=False: a debugger's peek; a read changes nothing, so only the report goes */
    if (rc < 0 || (rc > 0 && check && pa_py_report(self, rc, &err) < 0)) {
        Py_DECREF(out);
        return rc < 0 ? pa_py_raise(rc, &err) : NULL;
    }
    return out;
}

static PyObject *backend_device_write(PyObject *op, PyObject *args)
{
    unsigned long long addr;
    Py_buffer data;
    BackendObject *self = (BackendObject *)op;
    if (!PyArg_ParseTuple(args, "Ky*:device_write", &addr, &data)) {
        return NULL;
    }
    /* checked after parsing: taking the data may run Python code that closes us */
    if (backend_live_or_raise(op) == NULL) {
        PyBuffer_Release(&data);
        return NULL;
    }
    pa_err err;
    int rc;
    pa_backend *be = self->be;
    self->pins++; /* close() + the last free cannot close be meanwhile */
    if ((size_t)data.len >= pa_work_gil_bytes()) {
        Py_BEGIN_ALLOW_THREADS
        rc = pa_sim_device_access(be, addr, data.buf, (size_t)data.len, true, &err);
        Py_END_ALLOW_THREADS
    } else {
        rc = pa_sim_device_access(be, addr, data.buf, (size_t)data.len, true, &err);
    }
    self->pins--;
    PyBuffer_Release(&data);
    pa_py_backend_settle(self);
    if (rc < 0) {
        return pa_py_raise(rc, &err);
    }
    if (rc > 0 && pa_py_report(self, rc, &err) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *backend_enter(PyObject *op, PyObject *unused)
{
    (void)unused;
    Py_INCREF(op);
    return op;
}

static PyObject *backend_exit(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    (void)args;
    (void)nargs;
    return backend_close(op, NULL);
}

static PyObject *backend_repr(PyObject *op)
{
    BackendObject *self = (BackendObject *)op;
    return PyUnicode_FromFormat("<pynq_alloc backend %R%s>", self->spec,
                                self->be == NULL || self->closing ? " (closed)" : "");
}

static PyObject *backend_name(PyObject *op, void *closure)
{
    (void)closure;
    BackendObject *self = (BackendObject *)op;
    return PyUnicode_FromString(self->ops->name);
}

static PyObject *backend_coherent(PyObject *op, void *closure)
{
    (void)closure;
    BackendObject *self = (BackendObject *)op;
    if (self->be == NULL) {
        Py_RETURN_NONE;
    }
    return PyBool_FromLong(pa_default_coherent(self->be));
}

PyDoc_STRVAR(allocate_doc,
             "allocate($self, shape, dtype='u4', *, cacheable=None, align=None, "
             "address_bits=None)\n--\n\n"
             "Allocate a zeroed Buffer from this backend.");
PyDoc_STRVAR(info_doc, "info($self)\n--\n\nA dict: name, total, used (what live buffers occupy: "
                       "lines and alignment padding), requested (their nbytes), free, "
                       "largest_free, buffers (bytes and counts), coherent (of a "
                       "cacheable=None buffer), cacheable (the backend's default), cache_line_size, closed, check, lowest_address, "
                       "highest_address (None where only the kernel knows), base_address (sim).");
PyDoc_STRVAR(close_doc, "close($self)\n--\n\nNo new allocations; the backend's resources are "
                        "released when its last buffer is gone (at once if there is none).");
PyDoc_STRVAR(device_read_doc,
             "device_read($self, device_address, nbytes, *, check=True)\n--\n\nsim only: what "
             "the simulated device reads at device_address (bytes). check=False peeks without "
             "a coherency report (for test benches and debuggers).");
PyDoc_STRVAR(device_write_doc,
             "device_write($self, device_address, data)\n--\n\nsim only: the simulated device writes "
             "data (any bytes-like object) at device_address.");

static PyObject *backend_live(PyObject *self, PyObject *unused)
{
    (void)unused;
    return pa_py_live_allocations((BackendObject *)self);
}

static PyMethodDef backend_methods[] = {
    {"allocate", (PyCFunction)(void (*)(void))backend_allocate, METH_FASTCALL | METH_KEYWORDS,
     allocate_doc},
    {"info", backend_info, METH_NOARGS, info_doc},
    {"close", backend_close, METH_NOARGS, close_doc},
    {"device_read", (PyCFunction)(void (*)(void))backend_device_read,
     METH_VARARGS | METH_KEYWORDS, device_read_doc},
    {"device_write", backend_device_write, METH_VARARGS, device_write_doc},
    {"_live", backend_live, METH_NOARGS,
     "_live($self)\n--\n\nThe blocks this backend has handed out and not got back, oldest last: "
     "(serial, device_address, nbytes, shape, dtype) each; shape and dtype are those of the "
     "Buffer allocate() returned while it lives, else None. For leak checks (the pytest plugin)."},
    {"_zeroing", backend_zeroing, METH_NOARGS,
     "_zeroing($self)\n--\n\nhugepage: how reused memory gets zeroed, in bytes: 'pending' (the "
     "background worker has still to zero), 'background' (it has zeroed), 'sync' (allocate() "
     "zeroed itself). 0 on other backends. For tests and the bench."},
    {"__enter__", backend_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))backend_exit, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef backend_getset[] = {
    {"name", backend_name, NULL, "Backend name ('sim', 'hugepage', ...).", NULL},
    {"coherent", backend_coherent, NULL, "Whether buffers are coherent by default.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef backend_members[] = {
    {"spec", T_OBJECT, offsetof(BackendObject, spec), READONLY, "The spec it was opened with."},
    {NULL, 0, 0, 0, NULL},
};

PyTypeObject PaBackend_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pynq_alloc.Backend",
    .tp_basicsize = sizeof(BackendObject),
    .tp_dealloc = backend_dealloc,
    .tp_repr = backend_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = PyDoc_STR("A source of device memory; made by pynq_alloc.open_backend()."),
    .tp_weaklistoffset = offsetof(BackendObject, weakreflist),
    .tp_methods = backend_methods,
    .tp_members = backend_members,
    .tp_getset = backend_getset,
};

int pa_py_backend_ready(void)
{
    return PyType_Ready(&PaBackend_Type);
}
