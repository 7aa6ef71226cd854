/* pynq_alloc._pynq_alloc: module init and the module-level functions
 * (allocate, open_backend, default_backend, set_default_backend). */
#define PA_IMPORT_ARRAY
#include "binding.h"
#include "cache.h"

#include <errno.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

typedef struct {
    PyObject *dflt;  /* BackendObject or NULL: the default backend */
    PyObject *dflt_spec; /* str: set_default_backend('spec') opened dflt; else NULL */
    int dflt_given;  /* dflt is a Backend the user passed to set_default_backend() */
    PyObject *specs; /* dict: spec string -> BackendObject, for allocate(target='...') */
    int warned;      /* the sim fallback warning was given */
} pa_state;

static pa_state *pa_get_state(PyObject *module)
{
    return (pa_state *)PyModule_GetState(module);
}

/* the board backends' probe results, as "name: reason" lines */
static PyObject *pa_probe_list(void)
{
    PyObject *list = PyList_New(0);
    for (size_t i = 0; list != NULL && pa_all_ops[i] != NULL; i++) {
        const pa_ops *ops = pa_all_ops[i];
        pa_err why;
        strcpy(why.msg, "usable");
        int rc = ops->probe != NULL ? ops->probe(NULL, &why) : -ENOTSUP;
        PyObject *row = Py_BuildValue("(sOOs)", ops->name, rc == 0 ? Py_True : Py_False,
                                      ops->board ? Py_True : Py_False, why.msg);
        if (row == NULL || PyList_Append(list, row) < 0) {
            Py_XDECREF(row);
            Py_CLEAR(list);
        }
        Py_XDECREF(row);
    }
    return list;
}

/* opens spec with PYNQ_ALLOC_SIM_CHECK (sim only) and, for the default
 * backend, PYNQ_ALLOC_CACHEABLE as options */
static PyObject *pa_open_with_env(const char *spec, int is_default)
{
    PyObject *pyspec = PyUnicode_FromString(spec), *kwargs = PyDict_New(), *res = NULL;
    const char *check = getenv("PYNQ_ALLOC_SIM_CHECK");
    const char *cacheable = getenv("PYNQ_ALLOC_CACHEABLE");
    if (pyspec == NULL || kwargs == NULL) {
        goto done;
    }
    if (check != NULL && check[0] != '\0' && strncmp(spec, "sim", 3) == 0 &&
        (spec[3] == '\0' || spec[3] == ':')) {
        PyObject *v = PyUnicode_FromString(check);
        if (v == NULL || PyDict_SetItemString(kwargs, "check", v) < 0) {
            Py_XDECREF(v);
            goto done;
        }
        Py_DECREF(v);
    }
    if (is_default && cacheable != NULL && cacheable[0] != '\0') {
        PyObject *v = NULL;
        if (!strcmp(cacheable, "1") || !strcasecmp(cacheable, "true") ||
            !strcasecmp(cacheable, "yes")) {
            v = Py_True;
        } else if (!strcmp(cacheable, "0") || !strcasecmp(cacheable, "false") ||
                   !strcasecmp(cacheable, "no")) {
            v = Py_False;
        } else {
            PyErr_Format(PyExc_ValueError,
                         "PYNQ_ALLOC_CACHEABLE=%s: use 1 (the default backend's buffers are "
                         "cacheable) or 0 (PYNQ's default: non-cacheable)",
                         cacheable);
            goto done;
        }
        if (PyDict_SetItemString(kwargs, "cacheable", v) < 0) {
            goto done;
        }
    }
    res = pa_py_backend_open(pyspec, kwargs);
done:
    Py_XDECREF(pyspec);
    Py_XDECREF(kwargs);
    return res;
}

static int pa_path_exists(const char *path)
{
    char full[4096];
    return pa_path(full, sizeof(full), path) == 0 && access(full, F_OK) == 0;
}

/* A backend this module opened by itself (the default, allocate(target='spec'))
 * is replaced by a new one when it was closed, or inherited through fork():
 * nobody else holds it to open it again. */
static int pa_replaceable(PyObject *op)
{
    BackendObject *b = (BackendObject *)op;
    return b->be == NULL || b->closing || pa_inherited(b->be);
}

/* PYNQ_ALLOC_BACKEND, else the first usable board backend, else sim off-board */
static PyObject *pa_resolve_default(pa_state *st)
{
    if (st->dflt != NULL) {
        if (st->dflt_given || !pa_replaceable(st->dflt)) {
            return st->dflt;
        }
        if (st->dflt_spec != NULL) {
            PyObject *be = pa_open_with_env(PyUnicode_AsUTF8(st->dflt_spec), 1);
            if (be == NULL) {
                return NULL;
            }
            Py_SETREF(st->dflt, be);
            return be;
        }
        Py_CLEAR(st->dflt);
    }
    const char *env = getenv("PYNQ_ALLOC_BACKEND");
    PyObject *be = NULL;
    if (env != NULL && env[0] != '\0') {
        be = pa_open_with_env(env, 1);
    } else {
        for (size_t i = 0; be == NULL && pa_all_ops[i] != NULL; i++) {
            pa_err why;
            if (pa_all_ops[i]->board && pa_all_ops[i]->probe(NULL, &why) == 0) {
                be = pa_open_with_env(pa_all_ops[i]->name, 1);
                if (be == NULL) {
                    return NULL;
                }
            }
        }
        if (be == NULL && pa_path_exists("/proc/device-tree")) {
            PyObject *rows = pa_probe_list(), *text = NULL;
            if (rows != NULL) {
                text = PyUnicode_FromString("");
                for (Py_ssize_t i = 0; text != NULL && i < PyList_GET_SIZE(rows); i++) {
                    PyObject *r = PyList_GET_ITEM(rows, i);
                    if (PyTuple_GET_ITEM(r, 2) == Py_True) {
                        PyObject *line = PyUnicode_FromFormat("\n  %S: %S", PyTuple_GET_ITEM(r, 0),
                                                              PyTuple_GET_ITEM(r, 3));
                        PyObject *next = line ? PyUnicode_Concat(text, line) : NULL;
                        Py_XDECREF(line);
                        Py_SETREF(text, next);
                    }
                }
                Py_DECREF(rows);
            }
            if (text != NULL) {
                PyErr_Format(PyExc_RuntimeError,
                             "no usable DMA memory backend on this board (it has "
                             "/proc/device-tree, so the simulated 'sim' backend is not used: "
                             "its fake addresses would corrupt memory if given to real "
                             "hardware). Probed:%U\nSet one up (see `python -m pynq_alloc "
                             "info`) or choose one with PYNQ_ALLOC_BACKEND.",
                             text);
                Py_DECREF(text);
            }
            return NULL;
        }
        if (be == NULL) {
            if (!st->warned) {
                st->warned = 1;
                /* stacklevel 1 from C is the Python frame that called
                 * allocate()/default_backend(): the caller's own line */
                if (PyErr_WarnEx(PyExc_UserWarning,
                                 "pynq_alloc: no DMA hardware found; using the simulated 'sim' "
                                 "backend (device addresses are simulated). Set "
                                 "PYNQ_ALLOC_BACKEND to choose a backend.",
                                 1) < 0) {
                    return NULL;
                }
            }
            be = pa_open_with_env("sim", 1);
        }
    }
    st->dflt = be;
    return be;
}

static PyObject *pa_resolve_target(pa_state *st, PyObject *target)
{
    if (target == NULL || target == Py_None) {
        return pa_resolve_default(st);
    }
    if (PaBackend_Check(target)) {
        return target;
    }
    if (!PyUnicode_Check(target)) {
        return NULL; /* not ours: the caller tries target.allocate */
    }
    PyObject *be = PyDict_GetItemWithError(st->specs, target);
    if (be != NULL && !pa_replaceable(be)) {
        return be;
    }
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (st->dflt != NULL && !pa_replaceable(st->dflt) &&
        PyUnicode_Compare(((BackendObject *)st->dflt)->spec, target) == 0) {
        return st->dflt;
    }
    const char *spec = pa_py_cstr(target, "a backend spec");
    if (spec == NULL || (be = pa_open_with_env(spec, 0)) == NULL) {
        return NULL;
    }
    int rc = PyDict_SetItem(st->specs, target, be);
    Py_DECREF(be); /* the dict keeps it */
    return rc < 0 ? NULL : be;
}

/* PYNQ's contract for other targets: target.allocate(shape, dtype, **kwargs);
 * keywords we do not know (PYNQ's pointer=, cache= ...) go unchanged */
static PyObject *pa_allocate_foreign(PyObject *target, PyObject *shape, PyObject *dtype,
                                     PyObject *cacheable, PyObject *align, PyObject *address_bits,
                                     PyObject *extra)
{
    PyObject *meth = PyObject_GetAttrString(target, "allocate");
    if (meth == NULL) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError,
                     "target must be None, a backend, a spec string such as 'sim', or an "
                     "object with an allocate(shape, dtype, **kwargs) method; got %.100s",
                     Py_TYPE(target)->tp_name);
        return NULL;
    }
    PyObject *kw = extra != NULL ? PyDict_Copy(extra) : PyDict_New(), *res = NULL;
    PyObject *args = Py_BuildValue("(OO)", shape, dtype != NULL ? dtype : Py_None);
    if (dtype == NULL && args != NULL) {
        Py_SETREF(args, Py_BuildValue("(Os)", shape, "u4"));
    }
    if (kw != NULL && args != NULL &&
        (cacheable == Py_None || PyDict_SetItemString(kw, "cacheable", cacheable) == 0) &&
        (align == Py_None || PyDict_SetItemString(kw, "align", align) == 0) &&
        (address_bits == Py_None || PyDict_SetItemString(kw, "address_bits", address_bits) == 0)) {
        res = PyObject_Call(meth, args, kw);
    }
    Py_XDECREF(kw);
    Py_XDECREF(args);
    Py_DECREF(meth);
    return res;
}

PyDoc_STRVAR(allocate_doc,
             "allocate(shape, dtype='u4', target=None, *, cacheable=None, align=None, "
             "address_bits=None, **kwargs)\n--\n\n"
             "Allocate a zeroed, physically contiguous Buffer (a numpy.ndarray subclass).\n\n"
             "target: None (the default backend), a backend, a spec string such as 'sim' or "
             "'hugepage', or any object with an allocate(shape, dtype, **kwargs) method (PYNQ "
             "devices and memories; other keywords go to it unchanged).\ncacheable: None is "
             "PYNQ's default, non-cacheable (coherent) memory where the backend can map it "
             "(or the backend's default); True asks for cached memory with flush()/invalidate(); "
             "False insists on non-cacheable.\nalign: a power of two in bytes (default 4096)."
             "\naddress_bits: every byte's device address is below 2**address_bits.");

/* "shape, dtype, ..." for error messages */
static PyObject *pa_name_list(const char *const *names, int nall)
{
    PyObject *text = PyUnicode_FromString("");
    for (int j = 0; text != NULL && j < nall; j++) {
        PyUnicode_AppendAndDel(&text, PyUnicode_FromFormat("%s%s", j ? ", " : "", names[j]));
    }
    return text;
}

int pa_py_fastargs(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                   const char *const *names, int npos, int nall, PyObject **out, PyObject **extra)
{
    if (nargs > npos) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %d positional arguments (%zd given)",
                     fname, npos, nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        out[i] = args[i];
    }
    Py_ssize_t nkw = kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        int j = 0;
        while (j < nall && PyUnicode_CompareWithASCIIString(key, names[j]) != 0) {
            j++;
        }
        if (j == nall && extra != NULL) {
            /* for a foreign target's allocate(), unchanged */
            if ((*extra == NULL && (*extra = PyDict_New()) == NULL) ||
                PyDict_SetItem(*extra, key, args[nargs + k]) < 0) {
                Py_CLEAR(*extra);
                return -1;
            }
            continue;
        }
        if (j == nall) {
            PyObject *list = pa_name_list(names, nall);
            if (list != NULL) {
                PyErr_Format(PyExc_TypeError,
                             "%s() got an unexpected keyword argument '%U' (it takes %U)", fname,
                             key, list);
                Py_DECREF(list);
            }
            return -1;
        }
        if (j < nargs) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", fname,
                         names[j]);
            goto fail;
        }
        out[j] = args[nargs + k];
    }
    if (out[0] == NULL) {
        PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", fname, names[0]);
        goto fail;
    }
    return 0;
fail:
    if (extra != NULL) {
        Py_CLEAR(*extra);
    }
    return -1;
}

static PyObject *pa_allocate(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames)
{
    static const char *const names[] = {"shape", "dtype", "target", "cacheable", "align",
                                        "address_bits"};
    PyObject *v[6] = {NULL, NULL, NULL, Py_None, Py_None, Py_None};
    PyObject *extra = NULL, *res = NULL;
    if (pa_py_fastargs("allocate", args, nargs, kwnames, names, 3, 6, v, &extra) < 0) {
        return NULL;
    }
    PyObject *be = pa_resolve_target(pa_get_state(module), v[2]);
    if (be == NULL) {
        if (!PyErr_Occurred()) {
            res = pa_allocate_foreign(v[2], v[0], v[1], v[3], v[4], v[5], extra);
        }
    } else if (extra != NULL) {
        /* ours: a keyword we do not know is a mistake, not something to pass on */
        Py_ssize_t pos = 0;
        PyObject *key, *value, *list = pa_name_list(names, 6);
        PyDict_Next(extra, &pos, &key, &value);
        if (list != NULL) {
            PyErr_Format(PyExc_TypeError,
                         "allocate() got an unexpected keyword argument '%U' (it takes %U; "
                         "other keywords are passed only to a foreign target's allocate())",
                         key, list);
            Py_DECREF(list);
        }
    } else {
        res = pa_py_allocate((BackendObject *)be, v[0], v[1], v[3], v[4], v[5]);
    }
    Py_XDECREF(extra);
    return res;
}

PyDoc_STRVAR(wrap_doc,
             "wrap(obj, device_address, *, coherent=True, backend=None, on_free=None)\n--\n\n"
             "A Buffer over memory another owner provides (anything with the buffer protocol or "
             "__array_interface__: an mmap, a PYNQ buffer, a DRM frame, a pynq_alloc Buffer), "
             "with the same views, address arithmetic and lifetime rules as allocate()'s.\n"
             "device_address: the device address of obj's first element.\ncoherent: False "
             "when the CPU maps it cached (flush()/invalidate() then use the CPU's own cache "
             "maintenance: x86, AArch64); a pynq_alloc Buffer keeps its own.\nbackend: what "
             "buf.backend reports.\non_free(obj): called once when the wrap is freed "
             "(freebuffer() or its last view gone); freebuffer() never frees obj's memory.");

static PyObject *pa_wrap(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                         PyObject *kwnames)
{
    (void)module;
    static const char *const names[] = {"obj", "device_address", "coherent", "backend",
                                        "on_free"};
    PyObject *v[5] = {NULL, NULL, NULL, Py_None, Py_None};
    if (pa_py_fastargs("wrap", args, nargs, kwnames, names, 2, 5, v, NULL) < 0) {
        return NULL;
    }
    if (v[1] == NULL) {
        PyErr_SetString(PyExc_TypeError, "wrap() missing required argument 'device_address'");
        return NULL;
    }
    return pa_py_wrap(v[0], v[1], v[2], v[3], v[4]);
}

PyDoc_STRVAR(open_backend_doc,
             "open_backend(spec, **options)\n--\n\n"
             "Open a new backend. spec: 'sim', 'hugepage', ... Options are backend specific, "
             "e.g. open_backend('sim', size=64 << 20, coherent=False, check='raise'); every "
             "backend takes cacheable=True (what cacheable=None means for its buffers: cached "
             "instead of PYNQ's non-cacheable default).");

static PyObject *pa_open_backend(PyObject *module, PyObject *args, PyObject *kwargs)
{
    (void)module;
    PyObject *spec;
    if (!PyArg_ParseTuple(args, "O:open_backend", &spec)) {
        return NULL;
    }
    return pa_py_backend_open(spec, kwargs);
}

PyDoc_STRVAR(default_backend_doc,
             "default_backend()\n--\n\n"
             "The backend allocate() uses when no target is given: PYNQ_ALLOC_BACKEND, else the "
             "first usable board backend, else (off-board only) 'sim' with a warning.");

static PyObject *pa_default_backend(PyObject *module, PyObject *unused)
{
    (void)unused;
    PyObject *be = pa_resolve_default(pa_get_state(module));
    Py_XINCREF(be);
    return be;
}

PyDoc_STRVAR(set_default_backend_doc,
             "set_default_backend(spec_or_backend)\n--\n\n"
             "Make a backend (or a spec string, opened now) the default; None goes back to "
             "automatic selection.");

static PyObject *pa_set_default_backend(PyObject *module, PyObject *arg)
{
    pa_state *st = pa_get_state(module);
    PyObject *be;
    if (arg == Py_None) {
        Py_CLEAR(st->dflt);
        Py_CLEAR(st->dflt_spec);
        st->dflt_given = 0;
        Py_RETURN_NONE;
    }
    if (PaBackend_Check(arg)) {
        Py_INCREF(arg);
        be = arg;
        Py_CLEAR(st->dflt_spec);
        st->dflt_given = 1;
    } else if (PyUnicode_Check(arg)) {
        const char *spec = pa_py_cstr(arg, "a backend spec");
        if (spec == NULL || (be = pa_open_with_env(spec, 1)) == NULL) {
            return NULL;
        }
        Py_INCREF(arg);
        Py_XSETREF(st->dflt_spec, arg);
        st->dflt_given = 0;
    } else {
        PyErr_Format(PyExc_TypeError, "expected a backend or a spec string, not %.100s",
                     Py_TYPE(arg)->tp_name);
        return NULL;
    }
    Py_XSETREF(st->dflt, be);
    Py_RETURN_NONE;
}

static PyObject *pa_probe(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return pa_probe_list();
}

static PyObject *pa_cache_info(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return Py_BuildValue("{s:s,s:n,s:O}", "method", pa_cache_method(), "line_size",
                         (Py_ssize_t)pa_cache_line_size(), "user_space",
                         pa_cache_user_maintenance() ? Py_True : Py_False);
}

static PyObject *pa_py_work_gil_bytes(PyObject *mod, PyObject *args)
{
    (void)mod;
    Py_ssize_t n = -1;
    if (!PyArg_ParseTuple(args, "|n:_work_gil_bytes", &n)) {
        return NULL;
    }
    if (n == -1) {
        return PyLong_FromSize_t(pa_work_gil_bytes());
    }
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "_work_gil_bytes: n must be >= 0");
        return NULL;
    }
    return PyLong_FromSize_t(pa_set_work_gil_bytes((size_t)n));
}

static PyMethodDef pa_methods[] = {
    {"allocate", (PyCFunction)(void (*)(void))pa_allocate, METH_FASTCALL | METH_KEYWORDS,
     allocate_doc},
    {"wrap", (PyCFunction)(void (*)(void))pa_wrap, METH_FASTCALL | METH_KEYWORDS, wrap_doc},
    {"open_backend", (PyCFunction)(void (*)(void))pa_open_backend, METH_VARARGS | METH_KEYWORDS,
     open_backend_doc},
    {"default_backend", pa_default_backend, METH_NOARGS, default_backend_doc},
    {"set_default_backend", pa_set_default_backend, METH_O, set_default_backend_doc},
    {"cache_info", pa_cache_info, METH_NOARGS,
     "cache_info()\n--\n\nThis CPU's cache maintenance: method, line_size, user_space."},
    {"_work_gil_bytes", pa_py_work_gil_bytes, METH_VARARGS,
     "_work_gil_bytes([n])\n--\n\nWork on this many bytes and more runs without the GIL; "
     "with n, sets it (tests) and returns the value before."},
    {"_probe", pa_probe, METH_NOARGS,
     "_probe()\n--\n\n[(name, usable, board, reason)] for every backend."},
    {NULL, NULL, 0, NULL},
};

static int pa_exec(PyObject *module)
{
    pa_state *st = pa_get_state(module);
    st->specs = PyDict_New();
    if (st->specs == NULL) {
        return -1;
    }
    /* types and exceptions are process-wide, as NumPy's own are */
    if (PaExc_CoherencyWarning == NULL) {
        PaExc_CoherencyWarning = PyErr_NewExceptionWithDoc(
            "pynq_alloc.CoherencyWarning",
            "The sim backend saw a cache-coherency mistake (missing flush()/invalidate()).",
            PyExc_UserWarning, NULL);
        PaExc_CoherencyError = PyErr_NewExceptionWithDoc(
            "pynq_alloc.CoherencyError",
            "The sim backend saw a cache-coherency mistake (check='raise').",
            PyExc_RuntimeError, NULL);
        if (PaExc_CoherencyWarning == NULL || PaExc_CoherencyError == NULL) {
            return -1;
        }
        if (pa_py_buffer_ready() < 0 || pa_py_backend_ready() < 0 || pa_py_wrap_ready() < 0) {
            return -1;
        }
    }
    if (PyModule_AddObjectRef(module, "Buffer", (PyObject *)&PaBuffer_Type) < 0 ||
        PyModule_AddObjectRef(module, "Backend", (PyObject *)&PaBackend_Type) < 0 ||
        PyModule_AddObjectRef(module, "CoherencyWarning", PaExc_CoherencyWarning) < 0 ||
        PyModule_AddObjectRef(module, "CoherencyError", PaExc_CoherencyError) < 0 ||
        PyModule_AddStringConstant(module, "known_backends", pa_known_backends()) < 0) {
        return -1;
    }
    return 0;
}

static int pa_traverse(PyObject *module, visitproc visit, void *arg)
{
    pa_state *st = pa_get_state(module);
    Py_VISIT(st->dflt);
    Py_VISIT(st->dflt_spec);
    Py_VISIT(st->specs);
    return 0;
}

static int pa_clear(PyObject *module)
{
    pa_state *st = pa_get_state(module);
    Py_CLEAR(st->dflt);
    Py_CLEAR(st->dflt_spec);
    Py_CLEAR(st->specs);
    return 0;
}

static void pa_free_module(void *module)
{
    pa_clear((PyObject *)module);
}

static PyModuleDef_Slot pa_slots[] = {
    {Py_mod_exec, (void *)pa_exec},
#ifdef Py_mod_gil
    /* the core locks its own state, but Buffer/Allocation counters rely on the GIL */
    {Py_mod_gil, Py_MOD_GIL_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef pa_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pynq_alloc._pynq_alloc",
    .m_doc = "Physically contiguous device memory as numpy arrays (C core).",
    .m_size = sizeof(pa_state),
    .m_methods = pa_methods,
    .m_slots = pa_slots,
    .m_traverse = pa_traverse,
    .m_clear = pa_clear,
    .m_free = pa_free_module,
};

/* The core's waits (pa_lock, pa_range_acquire) come here: a thread that
 * holds the GIL lets the other Python threads run while it blocks. Called
 * without the GIL too (syncs of large ranges, the core's own threads). */
static void pa_py_waiter(void (*block)(void *), void *arg)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyThreadState *ts = PyThreadState_GetUnchecked();
#else
    PyThreadState *ts = _PyThreadState_UncheckedGet();
#endif
    /* Before 3.12 the "current" thread state is the GIL holder's, whichever
     * thread that is: this thread holds the GIL only when it is its own. Any
     * doubt (a sub-interpreter's thread) errs towards blocking with the GIL,
     * never towards releasing a GIL this thread does not hold. */
    if (ts == NULL || ts != PyGILState_GetThisThreadState()) {
        block(arg);
        return;
    }
    Py_BEGIN_ALLOW_THREADS
    block(arg);
    Py_END_ALLOW_THREADS
}

PyMODINIT_FUNC PyInit__pynq_alloc(void)
{
    pa_set_waiter(pa_py_waiter);
    import_array();
    return PyModuleDef_Init(&pa_module);
}
