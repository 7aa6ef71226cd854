/* pynq_alloc binding layer: the Python objects (Backend, Allocation, Buffer)
 * around the core. Owns every Python object and nothing else. */
#ifndef PA_BINDING_H
#define PA_BINDING_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define NPY_NO_DEPRECATED_API NPY_1_22_API_VERSION
#define NPY_TARGET_VERSION NPY_1_22_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL pynq_alloc_ARRAY_API
#ifndef PA_IMPORT_ARRAY
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>

/* Built against NumPy 1.x headers (Debian's python3-numpy on a board, the ARM
 * cross lanes): the NumPy 2 descriptor accessors, spelled as numpy's
 * npy_2_compat.h spells them for 1.x. */
#if NPY_ABI_VERSION < 0x02000000 && !defined(PyDataType_ELSIZE)
#define PyDataType_ELSIZE(d) ((npy_intp)(d)->elsize)
#define PyDataType_SET_ELSIZE(d, s) ((void)((d)->elsize = (int)(s)))
#endif

#include "pa.h"

/* syncs, device accesses and allocations of pa_work_gil_bytes() (pa.h) and more
 * run without the GIL; backends with own_gil_work decide for themselves
 * inside alloc and free */

/* A backend as Python sees it. The core backend stays open until close() was
 * asked AND the last allocation made from it is gone. */
typedef struct {
    PyObject_HEAD
    pa_backend *be;     /* NULL once the core backend is closed */
    const pa_ops *ops;  /* what it is, also after close */
    PyObject *spec; /* str */
    int check;      /* sim checking: 0 off, 1 warn, 2 raise */
    int closing;    /* close() was called */
    Py_ssize_t pins; /* calls using be without the GIL; be is not closed while > 0 */
    PyObject *weakreflist;
} BackendObject;

/* One pa_block and the bookkeeping freebuffer() needs. */
typedef struct AllocationObject {
    PyObject_HEAD
    BackendObject *backend; /* strong; NULL once the block is released */
    /* the list of allocations holding a block (allocation.c), for Backend._live() */
    struct AllocationObject *live_prev, *live_next;
    unsigned long long serial; /* 1, 2, ... in allocation order; 0 when not listed */
    pa_block block;
    Py_ssize_t views;   /* Buffer objects linked to this allocation */
    Py_ssize_t exports; /* buffer-protocol exports of those Buffers */
    Py_ssize_t busy;    /* syncs running without the GIL */
    PyObject *anchor;   /* borrowed: plain ndarray between the root Buffer and us */
    PyObject *root;     /* borrowed: the Buffer allocate() returned, NULL once gone */
} AllocationObject;

typedef struct {
    PyArrayObject_fields arr;
    AllocationObject *alloc; /* strong; NULL for arrays not backed by device memory */
    int freed;               /* freebuffer() emptied this array */
    Py_ssize_t exports;      /* its own buffer-protocol exports (added to alloc's once linked) */
    PyObject *address;       /* device_address as an int, made on first use (a Buffer's data
                              * pointer never moves: `data` cannot be assigned); fits the
                              * object's 128-byte allocation class */
} BufferObject;

extern PyTypeObject PaBackend_Type;
extern PyTypeObject PaAllocation_Type;
extern PyTypeObject PaBuffer_Type;
extern PyObject *PaExc_CoherencyWarning;
extern PyObject *PaExc_CoherencyError;

#define PaBuffer_Check(op) PyObject_TypeCheck(op, &PaBuffer_Type)
#define PaBackend_Check(op) PyObject_TypeCheck(op, &PaBackend_Type)

/* core error (rc < 0) -> Python exception; returns NULL */
PyObject *pa_py_raise(int rc, const pa_err *err);
/* sim checking report (rc > 0): warn or raise per the backend's mode; -1 if raised */
int pa_py_report(const BackendObject *b, int rc, const pa_err *err);

/* closes b's core backend once close() was asked, its last block is gone and
 * no call uses it without the GIL */
void pa_py_backend_settle(BackendObject *b);
/* the UTF-8 text of a str for C; ValueError naming what for an embedded NUL */
const char *pa_py_cstr(PyObject *s, const char *what);

int pa_py_buffer_ready(void);
int pa_py_backend_ready(void);

PyObject *pa_py_backend_open(PyObject *spec, PyObject *kwargs);
PyObject *pa_py_allocate(BackendObject *b, PyObject *shape, PyObject *dtype, PyObject *cacheable,
                         PyObject *align, PyObject *address_bits);
/* cacheable: None -> 0, True/1 -> PA_CACHED, False/0 -> PA_UNCACHED; else an exception */
int pa_py_parse_cacheable(PyObject *cacheable, unsigned *flags);
/* argument parsing for METH_FASTCALL | METH_KEYWORDS: out[] has nall slots,
 * preset to defaults (NULL = missing); the first name is required. Unknown
 * keywords: a TypeError naming the accepted ones, or, with extra != NULL,
 * collected into a new dict *extra (left NULL when there are none). */
int pa_py_fastargs(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                   const char *const *names, int npos, int nall, PyObject **out, PyObject **extra);
/* [lo, hi) byte extent of an array's elements; lo == hi when it has none */
void pa_py_extent(PyArrayObject *arr, char **lo, char **hi);
/* allocation.c: lifetime and counting */
/* release the core block (idempotent); closes the core backend if it was the last */
void pa_py_allocation_release(AllocationObject *a);
/* the fields of a new Allocation (or wrap) before it holds anything */
void pa_py_allocation_init(AllocationObject *a);
/* a now holds a block from its backend: list it (unlisted when the block goes) */
void pa_py_allocation_list(AllocationObject *a);
/* Backend._live(): (serial, device_address, nbytes, shape, dtype) of b's blocks */
PyObject *pa_py_live_allocations(BackendObject *b);
/* count buf as a view of a (takes a reference to a) */
void pa_py_link(BufferObject *buf, AllocationObject *a);
/* the live allocation arr's data pointer lies in, following parent's bases; or NULL */
AllocationObject *pa_py_shared_allocation(PyArrayObject *arr, PyObject *parent);
/* Buffer.freebuffer(): refuses (BufferError) while anything still uses the memory */
PyObject *pa_py_freebuffer(PyObject *self, PyObject *unused);
/* the live allocation when self is its root Buffer, else NULL */
AllocationObject *pa_py_root_of(PyObject *self);
/* wrap.c: Buffers over another owner's memory */
PyObject *pa_py_wrap(PyObject *obj, PyObject *device_address, PyObject *coherent,
                     PyObject *backend, PyObject *on_free);
int pa_py_is_wrap(const AllocationObject *a);
/* releases a wrap's export and runs its on_free once (from pa_py_allocation_release) */
void pa_py_wrap_release(AllocationObject *a);
int pa_py_wrap_ready(void);
/* a result NumPy made from the root that holds the root: re-point it at the anchor */
PyObject *pa_py_rehome(PyObject *self, PyObject *res);

#endif
