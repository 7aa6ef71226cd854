/* Buffer: an ndarray subtype over device memory. Its lifetime machinery
 * (counting views, freebuffer(), objects that hold the root) is in
 * allocation.c; allocate() is in allocate.c. */
#include "binding.h"

#include <errno.h>
#include <stdlib.h>

#include <numpy/arrayscalars.h>

#include <stdio.h>
#include <string.h>

/* ------------------------------------------------------------------- helpers */

/* [lo, hi) byte extent of an array's elements; lo == hi when it has none */
void pa_py_extent(PyArrayObject *arr, char **lo, char **hi)
{
    char *l = PyArray_BYTES(arr), *h = l;
    int nd = PyArray_NDIM(arr);
    npy_intp *dims = PyArray_DIMS(arr), *strides = PyArray_STRIDES(arr);
    for (int i = 0; i < nd; i++) {
        if (dims[i] == 0) {
            *lo = *hi = l;
            return;
        }
        npy_intp ext = (dims[i] - 1) * strides[i];
        if (ext < 0) {
            l += ext;
        } else {
            h += ext;
        }
    }
    *lo = l;
    *hi = h + PyArray_ITEMSIZE(arr);
}

/* ------------------------------------------------------------------- Buffer */

static void buffer_dealloc(PyObject *self)
{
    BufferObject *buf = (BufferObject *)self;
    AllocationObject *a = buf->alloc;
    Py_CLEAR(buf->address);
    if (a != NULL) {
        buf->alloc = NULL;
        a->views--;
        if (a->root == self) {
            a->root = NULL;
        }
        Py_DECREF(a);
    }
    PyArray_Type.tp_dealloc(self);
}

/* a linked, not yet released allocation, or NULL */
static AllocationObject *buffer_live(BufferObject *buf)
{
    AllocationObject *a = buf->alloc;
    return a != NULL && a->backend != NULL ? a : NULL;
}

static PyObject *buffer_device_address(PyObject *self, void *closure)
{
    (void)closure;
    AllocationObject *a = buffer_live((BufferObject *)self);
    if (a == NULL) {
        Py_RETURN_NONE;
    }
    BufferObject *buf = (BufferObject *)self;
    if (buf->address == NULL) {
        uint64_t off = (uint64_t)(PyArray_BYTES((PyArrayObject *)self) - (char *)a->block.cpu);
        buf->address = PyLong_FromUnsignedLongLong(a->block.device_address + off);
        if (buf->address == NULL) {
            return NULL;
        }
    }
    Py_INCREF(buf->address);
    return buf->address;
}

static PyObject *buffer_virtual_address(PyObject *self, void *closure)
{
    (void)closure;
    if (((BufferObject *)self)->freed) {
        Py_RETURN_NONE;
    }
    return PyLong_FromVoidPtr(PyArray_BYTES((PyArrayObject *)self));
}

static PyObject *buffer_offset(PyObject *self, void *closure)
{
    (void)closure;
    AllocationObject *a = buffer_live((BufferObject *)self);
    if (a == NULL) {
        Py_RETURN_NONE;
    }
    return PyLong_FromSsize_t(PyArray_BYTES((PyArrayObject *)self) - (char *)a->block.cpu);
}

static PyObject *buffer_coherent(PyObject *self, void *closure)
{
    AllocationObject *a = buffer_live((BufferObject *)self);
    if (a == NULL) {
        Py_RETURN_NONE;
    }
    /* closure != NULL: the "cacheable" spelling, PYNQ's inverse */
    return PyBool_FromLong(a->block.coherent == (closure == NULL));
}

static PyObject *buffer_backend(PyObject *self, void *closure)
{
    (void)closure;
    AllocationObject *a = buffer_live((BufferObject *)self);
    if (a == NULL) {
        Py_RETURN_NONE;
    }
    Py_INCREF(a->backend);
    return (PyObject *)a->backend;
}

static PyObject *buffer_not_backed(BufferObject *buf, const char *what)
{
    PyErr_Format(PyExc_ValueError,
                 "%s: this array is not backed by device memory (%s); only buffers from "
                 "allocate() and views of them can be synchronised",
                 what,
                 buf->freed ? "freebuffer() released it"
                            : "it is a copy or a result computed from a Buffer");
    return NULL;
}


/* A strided view is synchronised run by run (the contiguous stretches of its
 * elements, neighbours sharing a cache line merged; pa_sync_runs walks them
 * from their description, see runs.h) when that costs less than its whole
 * extent: runs * (lines per run + the backend's sync_run_lines) <= lines of
 * the extent (pa.h; measured by bench/crossover.py). Else the whole extent in
 * one call, as PYNQ does. */

/* The view's runs, offsets from the block's start at cpu; false when it is
 * one contiguous stretch, has more outer dimensions than pa_runs holds or
 * its run count overflows (the extent then) */
static bool pa_view_runs(PyArrayObject *arr, const void *cpu, pa_runs *r, size_t *count)
{
    int nd = PyArray_NDIM(arr), n = 0;
    npy_intp *dims = PyArray_DIMS(arr), *strides = PyArray_STRIDES(arr);
    npy_intp run = PyArray_ITEMSIZE(arr);
    npy_intp odims[NPY_MAXDIMS], ostrides[NPY_MAXDIMS];
    for (int i = 0; i < nd; i++) {
        if (dims[i] != 1) {
            odims[n] = dims[i];
            ostrides[n] = strides[i];
            n++;
        }
    }
    while (n > 0 && ostrides[n - 1] == run) {
        if (__builtin_mul_overflow(run, odims[n - 1], &run)) {
            return false;
        }
        n--;
    }
    if (n == 0 || n > PA_RUNS_MAXDIM || run <= 0) {
        return false;
    }
    size_t c = 1;
    for (int i = 0; i < n; i++) {
        if (odims[i] <= 0 || __builtin_mul_overflow(c, (size_t)odims[i], &c)) {
            return false;
        }
        r->dims[i] = (size_t)odims[i];
        r->strides[i] = (ptrdiff_t)ostrides[i];
    }
    r->ndim = n;
    r->len = (size_t)run;
    r->off = (size_t)(PyArray_BYTES(arr) - (const char *)cpu);
    *count = c;
    return true;
}

static PyObject *buffer_sync(PyObject *self, pa_sync_dir dir, const char *what)
{
    BufferObject *buf = (BufferObject *)self;
    AllocationObject *a = buffer_live(buf);
    if (a == NULL) {
        return buffer_not_backed(buf, what);
    }
    if (a->block.coherent) {
        Py_RETURN_NONE;
    }
    char *lo, *hi;
    pa_py_extent((PyArrayObject *)self, &lo, &hi);
    size_t off = (size_t)(lo - (char *)a->block.cpu), len = (size_t)(hi - lo);
    pa_backend *be = a->backend->be;
    pa_err err;
    int rc;
    pa_runs runs;
    size_t count;
    bool per_run = false;
    unsigned run_lines = a->block.foreign ? PA_CPU_RUN_LINES
                         : be != NULL     ? be->ops->sync_run_lines
                                          : 0;
    if (len > 0 && run_lines > 0 &&
        pa_view_runs((PyArrayObject *)self, a->block.cpu, &runs, &count)) {
        /* lines per run: exact when every outer stride is whole lines (each
         * run then sits in its lines as the first does), else the most a run
         * of that length can touch */
        bool whole = true;
        for (int d = 0; d < runs.ndim; d++) {
            whole = whole && runs.strides[d] % PA_LINE == 0;
        }
        size_t first = (size_t)(uintptr_t)PyArray_BYTES((PyArrayObject *)self) % PA_LINE;
        size_t each = whole ? (first + runs.len + PA_LINE - 1) / PA_LINE
                            : (runs.len + 2 * PA_LINE - 2) / PA_LINE;
        size_t extent_lines = ((size_t)(uintptr_t)lo % PA_LINE + len + PA_LINE - 1) / PA_LINE;
        size_t cost;
        per_run = !__builtin_mul_overflow(each + run_lines, count, &cost) && cost <= extent_lines;
        if (per_run) {
            len = each * count * PA_LINE; /* for the GIL decision below */
        }
    }
    /* keeps freebuffer() from another thread away meanwhile: the GIL is
     * released for large ranges, and for small ones while waiting for an
     * overlapping sync on another thread (pa_range_acquire) */
    a->busy++;
    if (len >= pa_work_gil_bytes()) {
        Py_BEGIN_ALLOW_THREADS
        rc = per_run ? pa_sync_runs(be, &a->block, &runs, dir, &err)
                     : pa_sync(be, &a->block, off, len, dir, &err);
        Py_END_ALLOW_THREADS
    } else {
        rc = per_run ? pa_sync_runs(be, &a->block, &runs, dir, &err)
                     : pa_sync(be, &a->block, off, len, dir, &err);
    }
    a->busy--;
    if (rc < 0) {
        return pa_py_raise(rc, &err);
    }
    if (rc > 0 && pa_py_report(a->backend, rc, &err) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *buffer_flush(PyObject *self, PyObject *unused)
{
    (void)unused;
    return buffer_sync(self, PA_TO_DEVICE, "flush()");
}

static PyObject *buffer_invalidate(PyObject *self, PyObject *unused)
{
    (void)unused;
    return buffer_sync(self, PA_FROM_DEVICE, "invalidate()");
}

static PyObject *buffer_enter(PyObject *self, PyObject *unused)
{
    (void)unused;
    Py_INCREF(self);
    return self;
}

static PyObject *buffer_exit(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)args;
    (void)nargs;
    return pa_py_freebuffer(self, NULL);
}

static int buffer_finalize(PyArrayObject *self, PyObject *obj)
{
    BufferObject *buf = (BufferObject *)self;
    if (buf->alloc != NULL || obj == NULL || obj == Py_None) {
        return 0;
    }
    AllocationObject *a = pa_py_shared_allocation(self, obj);
    if (a != NULL) {
        pa_py_link(buf, a);
    }
    return 0;
}

/* for Python subclasses that define their own __array_finalize__ */
static PyObject *buffer_link_method(PyObject *self, PyObject *obj)
{
    if (buffer_finalize((PyArrayObject *)self, obj) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* __array_finalize__ in the type's dict: NumPy 2 looks it up on the type and
 * calls a PyCapsule there as a C function (no Python-level call per view);
 * looked up on an instance (NumPy's subok=True helpers call
 * new.__array_finalize__(original) from Python, as do subclasses through
 * super()) it is the bound method. NumPy 1.x looks it up on the instance for
 * every view, so there it stays the capsule. */
typedef struct {
    PyObject_HEAD
    PyObject *capsule;
} FinalizeDescrObject;

static int pa_numpy1; /* the running NumPy is 1.x */

static PyMethodDef buffer_finalize_def = {
    "__array_finalize__", buffer_link_method, METH_O,
    "__array_finalize__($self, obj, /)\n--\n\nLinks this array to the device memory of obj "
    "when it shares it."};

static PyObject *finalize_descr_get(PyObject *self, PyObject *obj, PyObject *type)
{
    (void)type;
    if (obj == NULL || obj == Py_None || pa_numpy1) {
        PyObject *capsule = ((FinalizeDescrObject *)self)->capsule;
        Py_INCREF(capsule);
        return capsule;
    }
    return PyCFunction_New(&buffer_finalize_def, obj);
}

static void finalize_descr_dealloc(PyObject *self)
{
    Py_XDECREF(((FinalizeDescrObject *)self)->capsule);
    Py_TYPE(self)->tp_free(self);
}

static PyTypeObject FinalizeDescr_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pynq_alloc._FinalizeDescriptor",
    .tp_basicsize = sizeof(FinalizeDescrObject),
    .tp_dealloc = finalize_descr_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_descr_get = finalize_descr_get,
};

/* Buffer's type. NumPy looks __array_finalize__ up on the new array's type for
 * every view it makes (PyArray_NewFromDescr): through type's generic getattr
 * that is two method-cache lookups and the descriptor's call, 140 of the 1 800
 * instructions of buf[10:20] (callgrind). For Buffer itself the answer is
 * always the capsule, so its metatype gives that one name directly; other
 * names and subclasses take the generic path. */
static PyObject *pa_finalize_name;    /* interned "__array_finalize__" */
static PyObject *pa_finalize_capsule; /* what finalize_descr_get gives for the type */

static PyObject *buffer_meta_getattro(PyObject *type, PyObject *name)
{
    if (name == pa_finalize_name && type == (PyObject *)&PaBuffer_Type) {
        Py_INCREF(pa_finalize_capsule);
        return pa_finalize_capsule;
    }
    return PyType_Type.tp_getattro(type, name);
}

static PyTypeObject BufferMeta_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pynq_alloc._BufferType",
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_getattro = buffer_meta_getattro,
    .tp_doc = PyDoc_STR("The type of pynq_alloc.Buffer (internal: makes NumPy's per-view "
                        "lookup of __array_finalize__ cheap)."),
};

static binaryfunc pa_ndarray_subscript;
static ssizeargfunc pa_ndarray_item;
static PyObject *pa_ndarray_view;     /* ndarray.view */
static PyObject *pa_ndarray_flat;     /* ndarray.flat descriptor */
static PyObject *pa_ndarray_data;     /* ndarray.data descriptor */

/* buf[i] of a structured dtype is a scalar that points into the buffer */
static PyObject *buffer_subscript(PyObject *self, PyObject *key)
{
    PyObject *res = pa_ndarray_subscript(self, key);
    if (PyArray_DESCR((PyArrayObject *)self)->type_num == NPY_VOID) {
        res = pa_py_rehome(self, res);
    }
    return res;
}

/* iteration (for rec in buf) goes through sq_item */
static PyObject *buffer_item(PyObject *self, Py_ssize_t i)
{
    PyObject *res = pa_ndarray_item(self, i);
    if (PyArray_DESCR((PyArrayObject *)self)->type_num == NPY_VOID) {
        res = pa_py_rehome(self, res);
    }
    return res;
}

/* buf.view(np.recarray), np.asmatrix(buf), np.rec.array(buf, copy=False) */
static PyObject *buffer_view(PyObject *self, PyObject *const *args, size_t nargsf,
                             PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t n = nargs + (kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0);
    PyObject *small[8], **stack = small;
    if (n + 1 > (Py_ssize_t)(sizeof(small) / sizeof(small[0]))) {
        stack = PyMem_New(PyObject *, (size_t)n + 1);
        if (stack == NULL) {
            return PyErr_NoMemory();
        }
    }
    stack[0] = self;
    memcpy(stack + 1, args, (size_t)n * sizeof(PyObject *));
    PyObject *res = PyObject_Vectorcall(pa_ndarray_view, stack, (size_t)nargs + 1, kwnames);
    if (stack != small) {
        PyMem_Free(stack);
    }
    return pa_py_rehome(self, res);
}

static PyObject *buffer_flat_get(PyObject *self, void *closure)
{
    (void)closure;
    if (pa_py_root_of(self) == NULL) {
        return PyArray_IterNew(self);
    }
    /* the iterator walks a plain view of the root, which holds the anchor */
    PyObject *plain = PyArray_View((PyArrayObject *)self, NULL, &PyArray_Type);
    if (plain == NULL) {
        return NULL;
    }
    PyObject *it = PyArray_IterNew(plain);
    Py_DECREF(plain);
    return it;
}

static int buffer_flat_set(PyObject *self, PyObject *value, void *closure)
{
    (void)closure;
    return Py_TYPE(pa_ndarray_flat)->tp_descr_set(pa_ndarray_flat, self, value);
}

static PyObject *buffer_data_get(PyObject *self, void *closure)
{
    (void)closure;
    return Py_TYPE(pa_ndarray_data)->tp_descr_get(pa_ndarray_data, self, (PyObject *)Py_TYPE(self));
}

/* NumPy 1.x lets `arr.data = obj` swap an array's memory and drop its base
 * (what keeps the device memory counted); NumPy 2 refuses it for every array */
static int buffer_data_set(PyObject *self, PyObject *value, void *closure)
{
    (void)self;
    (void)value;
    (void)closure;
    PyErr_SetString(PyExc_AttributeError,
                    "a pynq_alloc Buffer's memory cannot be replaced ('data' is read-only); "
                    "copy into it with buf[...] = values");
    return -1;
}

/* ufunc and reduction results do not share the allocation: plain ndarrays */
static PyObject *buffer_array_wrap(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"array", "context", "return_scalar", NULL};
    PyObject *arr, *context = NULL, *scalar = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!|OO:__array_wrap__", kwlist, &PyArray_Type,
                                     &arr, &context, &scalar)) {
        return NULL;
    }
    if (arr == self || (PaBuffer_Check(arr) && ((BufferObject *)arr)->alloc != NULL)) {
        Py_INCREF(arr); /* an out= argument that is device memory stays what it is */
        return arr;
    }
    /* NumPy 2 says whether it wants a scalar; NumPy 1.x expects 0-d ufunc results
     * (wrap called with a context, None for reductions) as scalars, but not the
     * arrays of methods such as squeeze (called with the array alone) */
    int return_scalar = scalar != NULL ? PyObject_IsTrue(scalar)
                                       : context != NULL;
    if (return_scalar < 0) {
        return NULL;
    }
    if (return_scalar && PyArray_NDIM((PyArrayObject *)arr) == 0) {
        Py_INCREF(arr);
        return PyArray_Return((PyArrayObject *)arr);
    }
    /* NumPy hands some views (squeeze) over as plain ndarrays: over device
     * memory they stay Buffers, anything else becomes a plain ndarray */
    PyTypeObject *to = pa_py_shared_allocation((PyArrayObject *)arr, arr) != NULL ? &PaBuffer_Type
                                                                               : &PyArray_Type;
    if (Py_IS_TYPE(arr, to)) {
        Py_INCREF(arr);
        return arr;
    }
    return PyArray_View((PyArrayObject *)arr, NULL, to);
}

/* ndarray.__setstate__ would swap the memory under the array and drop what
 * keeps the device memory alive; Buffers are never unpickled as Buffers */
static PyObject *buffer_setstate(PyObject *self, PyObject *state)
{
    (void)self;
    (void)state;
    PyErr_SetString(PyExc_TypeError,
                    "a pynq_alloc Buffer's memory cannot be replaced (__setstate__); a pickled "
                    "Buffer is restored as a plain numpy.ndarray, and new device memory comes "
                    "from pynq_alloc.allocate()");
    return NULL;
}

static PyObject *buffer_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    (void)args;
    (void)kwds;
    PyErr_Format(PyExc_TypeError,
                 "%.100s cannot be constructed directly (over a buffer= or not): device "
                 "memory comes from pynq_alloc.allocate(shape, dtype, target=...)",
                 type->tp_name);
    return NULL;
}

static PyObject *pa_ndarray_dlpack; /* ndarray.__dlpack__ */

/* A DLPack capsule holds the array it was made from. Made from the root it
 * would hold the root, whose holders freebuffer() cannot count; made from a
 * plain view instead, it holds the anchor, which freebuffer() counts. */
static PyObject *buffer_dlpack(PyObject *self, PyObject *args, PyObject *kwds)
{
    PyObject *target = pa_py_root_of(self) != NULL
                           ? PyArray_View((PyArrayObject *)self, NULL, &PyArray_Type)
                           : (Py_INCREF(self), self);
    if (target == NULL) {
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(args);
    PyObject *full = PyTuple_New(n + 1), *res = NULL;
    if (full != NULL) {
        Py_INCREF(target);
        PyTuple_SET_ITEM(full, 0, target);
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *arg = PyTuple_GET_ITEM(args, i);
            Py_INCREF(arg);
            PyTuple_SET_ITEM(full, i + 1, arg);
        }
        res = PyObject_Call(pa_ndarray_dlpack, full, kwds);
        Py_DECREF(full);
    }
    Py_DECREF(target);
    return res;
}

/* device memory cannot travel to another process: pickle the data as ndarray */
static PyObject *buffer_reduce_ex(PyObject *self, PyObject *args)
{
    PyObject *plain = PyArray_View((PyArrayObject *)self, NULL, &PyArray_Type);
    if (plain == NULL) {
        return NULL;
    }
    PyObject *meth = PyObject_GetAttrString(plain, "__reduce_ex__");
    Py_DECREF(plain);
    if (meth == NULL) {
        return NULL;
    }
    PyObject *res = PyObject_Call(meth, args, NULL);
    Py_DECREF(meth);
    return res;
}

static PyObject *buffer_reduce(PyObject *self, PyObject *unused)
{
    (void)unused;
    PyObject *plain = PyArray_View((PyArrayObject *)self, NULL, &PyArray_Type);
    if (plain == NULL) {
        return NULL;
    }
    PyObject *res = PyObject_CallMethod(plain, "__reduce__", NULL);
    Py_DECREF(plain);
    return res;
}

static PyObject *pa_html_escape(PyObject *text)
{
    PyObject *res = text;
    static const char *pairs[][2] = {
        {"&", "&amp;"}, {"<", "&lt;"}, {">", "&gt;"}, {"\"", "&quot;"}, {"'", "&#x27;"}};
    Py_INCREF(res);
    for (size_t i = 0; res != NULL && i < sizeof(pairs) / sizeof(pairs[0]); i++) {
        PyObject *from = PyUnicode_FromString(pairs[i][0]);
        PyObject *to = PyUnicode_FromString(pairs[i][1]);
        PyObject *next = (from && to) ? PyUnicode_Replace(res, from, to, -1) : NULL;
        Py_XDECREF(from);
        Py_XDECREF(to);
        Py_SETREF(res, next);
    }
    return res;
}

/* Jupyter shows this: numpy's repr plus where the memory is on the device */
static PyObject *buffer_repr_html(PyObject *self, PyObject *unused)
{
    (void)unused;
    PyObject *repr = PyObject_Repr(self), *esc = NULL, *spec = NULL, *res = NULL;
    if (repr == NULL || (esc = pa_html_escape(repr)) == NULL) {
        goto done;
    }
    BufferObject *buf = (BufferObject *)self;
    AllocationObject *a = buffer_live(buf);
    if (a != NULL && (spec = pa_html_escape(a->backend->spec)) == NULL) {
        goto done;
    }
    if (a != NULL) {
        uint64_t addr = a->block.device_address +
                        (uint64_t)(PyArray_BYTES((PyArrayObject *)self) - (char *)a->block.cpu);
        char where[160];
        snprintf(where, sizeof(where), "device_address 0x%llx &middot; %zd bytes",
                 (unsigned long long)addr, (Py_ssize_t)PyArray_NBYTES((PyArrayObject *)self));
        res = PyUnicode_FromFormat("<pre>%U</pre><small>%s &middot; backend %U &middot; %s</small>",
                                   esc, where, spec,
                                   a->block.coherent ? "coherent" : "non-coherent (flush/invalidate)");
    } else {
        res = PyUnicode_FromFormat("<pre>%U</pre><small>%s</small>", esc,
                                   buf->freed ? "freed: no device memory"
                                              : "not backed by device memory (a copy)");
    }
done:
    Py_XDECREF(repr);
    Py_XDECREF(esc);
    Py_XDECREF(spec);
    return res;
}

/* buffer-protocol exports are counted so freebuffer() can refuse while they live */
static int buffer_getbuffer(PyObject *self, Py_buffer *view, int flags)
{
    if (PyArray_Type.tp_as_buffer->bf_getbuffer(self, view, flags) < 0) {
        return -1;
    }
    BufferObject *buf = (BufferObject *)self;
    buf->exports++;
    if (buf->alloc != NULL) {
        buf->alloc->exports++;
    }
    return 0;
}

static void buffer_releasebuffer(PyObject *self, Py_buffer *view)
{
    if (PyArray_Type.tp_as_buffer->bf_releasebuffer != NULL) {
        PyArray_Type.tp_as_buffer->bf_releasebuffer(self, view);
    }
    BufferObject *buf = (BufferObject *)self;
    buf->exports--;
    if (buf->alloc != NULL) {
        buf->alloc->exports--;
    }
}

static PyMappingMethods buffer_as_mapping = {
    .mp_subscript = buffer_subscript, /* the other slots are inherited */
};

static PySequenceMethods buffer_as_sequence = {
    .sq_item = buffer_item,
};

static PyBufferProcs buffer_as_buffer = {
    .bf_getbuffer = buffer_getbuffer,
    .bf_releasebuffer = buffer_releasebuffer,
};

PyDoc_STRVAR(flush_doc, "flush($self)\n--\n\nMake the CPU's writes visible to the device (clean "
                        "the cache lines this view spans). A no-op on coherent buffers.");
PyDoc_STRVAR(sync_to_device_doc, "sync_to_device($self)\n--\n\nAlias of flush().");
PyDoc_STRVAR(invalidate_doc,
             "invalidate($self)\n--\n\nMake the device's writes visible to the CPU (clean+invalidate "
             "the cache lines this view spans). A no-op on coherent buffers.");
PyDoc_STRVAR(sync_from_device_doc, "sync_from_device($self)\n--\n\nAlias of invalidate().");
PyDoc_STRVAR(freebuffer_doc,
             "freebuffer($self)\n--\n\nReturn the memory to its backend now. Raises BufferError "
             "while views, plain ndarray views or memoryviews of it exist. Afterwards the array "
             "is empty and read-only. A second call does nothing.");
PyDoc_STRVAR(close_doc, "close($self)\n--\n\nAlias of freebuffer().");

static PyMethodDef buffer_methods[] = {
    {"flush", buffer_flush, METH_NOARGS, flush_doc},
    {"sync_to_device", buffer_flush, METH_NOARGS, sync_to_device_doc},
    {"invalidate", buffer_invalidate, METH_NOARGS, invalidate_doc},
    {"sync_from_device", buffer_invalidate, METH_NOARGS, sync_from_device_doc},
    {"freebuffer", pa_py_freebuffer, METH_NOARGS, freebuffer_doc},
    {"close", pa_py_freebuffer, METH_NOARGS, close_doc},
    {"__enter__", buffer_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))buffer_exit, METH_FASTCALL, NULL},
    {"_array_finalize", buffer_link_method, METH_O,
     "_array_finalize($self, obj)\n--\n\nWhat Buffer.__array_finalize__ does (a C function NumPy calls "
     "directly); a Python subclass that defines __array_finalize__ calls this instead of "
     "super().__array_finalize__(obj)."},
    {"view", (PyCFunction)(void (*)(void))buffer_view, METH_FASTCALL | METH_KEYWORDS,
     "view($self, /, dtype=None, type=None)\n--\n\nnumpy.ndarray.view. A view as another ndarray "
     "subclass (numpy.recarray, numpy.matrix) is counted by freebuffer() like a plain view."},
    {"__array_wrap__", (PyCFunction)(void (*)(void))buffer_array_wrap,
     METH_VARARGS | METH_KEYWORDS, NULL},
    {"__reduce__", buffer_reduce, METH_NOARGS, NULL},
    {"__setstate__", buffer_setstate, METH_O, NULL},
    {"__dlpack__", (PyCFunction)(void (*)(void))buffer_dlpack, METH_VARARGS | METH_KEYWORDS,
     "numpy.ndarray.__dlpack__; the capsule counts as a plain view for freebuffer()."},
    {"__reduce_ex__", buffer_reduce_ex, METH_VARARGS, NULL},
    {"_repr_html_", buffer_repr_html, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef buffer_getset[] = {
    {"device_address", buffer_device_address, NULL,
     "Address of element 0 as the device sees it (int), or None when not device memory.", NULL},
    {"physical_address", buffer_device_address, NULL, "Same as device_address (PYNQ name).", NULL},
    {"virtual_address", buffer_virtual_address, NULL, "CPU address of element 0.", NULL},
    {"offset", buffer_offset, NULL, "Byte offset of element 0 in its allocation.", NULL},
    {"coherent", buffer_coherent, NULL, "True if no flush()/invalidate() is needed.", NULL},
    {"cacheable", buffer_coherent, NULL, "not coherent (PYNQ's definition).", "cacheable"},
    {"backend", buffer_backend, NULL, "The backend the memory came from.", NULL},
    {"data", buffer_data_get, buffer_data_set,
     "numpy.ndarray.data (read-only: the memory of a Buffer cannot be replaced).", NULL},
    {"flat", buffer_flat_get, buffer_flat_set,
     "numpy.ndarray.flat; a live iterator counts as a plain view for freebuffer().", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(buffer_doc,
             "Buffer: a numpy.ndarray over physically contiguous device memory.\n\n"
             "Made by pynq_alloc.allocate(). Views (slices, reshape, transpose, view(dtype)) "
             "stay Buffers over the same memory; copies and computed results carry no device "
             "address.");

PyTypeObject PaBuffer_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pynq_alloc.Buffer",
    .tp_basicsize = sizeof(BufferObject),
    .tp_dealloc = buffer_dealloc,
    .tp_as_buffer = &buffer_as_buffer,
    .tp_as_mapping = &buffer_as_mapping,
    .tp_as_sequence = &buffer_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = buffer_doc,
    .tp_methods = buffer_methods,
    .tp_getset = buffer_getset,
    .tp_new = buffer_new,
};

int pa_py_buffer_ready(void)
{
    /* the struct we extend must be the one this NumPy allocates */
    if (PyArray_Type.tp_basicsize != (Py_ssize_t)sizeof(PyArrayObject_fields)) {
        PyErr_Format(PyExc_ImportError,
                     "pynq_alloc was built for a NumPy whose ndarray is %zd bytes, but this "
                     "NumPy's is %zd; reinstall pynq_alloc against this NumPy",
                     (Py_ssize_t)sizeof(PyArrayObject_fields), PyArray_Type.tp_basicsize);
        return -1;
    }
    PaBuffer_Type.tp_base = &PyArray_Type;
    pa_ndarray_subscript = PyArray_Type.tp_as_mapping->mp_subscript;
    pa_ndarray_item = PyArray_Type.tp_as_sequence->sq_item;
    pa_ndarray_view = PyDict_GetItemString(PyArray_Type.tp_dict, "view");
    pa_ndarray_flat = PyDict_GetItemString(PyArray_Type.tp_dict, "flat");
    pa_ndarray_data = PyDict_GetItemString(PyArray_Type.tp_dict, "data");
    if (pa_ndarray_view == NULL || pa_ndarray_flat == NULL || pa_ndarray_data == NULL ||
        Py_TYPE(pa_ndarray_data)->tp_descr_get == NULL ||
        Py_TYPE(pa_ndarray_flat)->tp_descr_set == NULL) {
        PyErr_SetString(PyExc_ImportError, "pynq_alloc: numpy.ndarray has no view/flat/data");
        return -1;
    }
    pa_ndarray_dlpack = PyDict_GetItemString(PyArray_Type.tp_dict, "__dlpack__");
    if (pa_ndarray_dlpack == NULL) {
        PyErr_SetString(PyExc_ImportError, "pynq_alloc: numpy.ndarray has no __dlpack__");
        return -1;
    }
    Py_INCREF(pa_ndarray_view); /* kept for the life of the process, as the type is */
    Py_INCREF(pa_ndarray_flat);
    Py_INCREF(pa_ndarray_data);
    Py_INCREF(pa_ndarray_dlpack);
    pa_numpy1 = PyArray_GetNDArrayCVersion() < 0x02000000;
    BufferMeta_Type.tp_base = &PyType_Type;
    pa_finalize_name = PyUnicode_InternFromString("__array_finalize__");
    if (pa_finalize_name == NULL || PyType_Ready(&BufferMeta_Type) < 0) {
        return -1;
    }
    Py_INCREF(&BufferMeta_Type); /* PaBuffer_Type refers to it, for the life of the process */
    Py_SET_TYPE(&PaBuffer_Type, &BufferMeta_Type);
    if (PyType_Ready(&PaAllocation_Type) < 0 || PyType_Ready(&FinalizeDescr_Type) < 0 ||
        PyType_Ready(&PaBuffer_Type) < 0) {
        return -1;
    }
    FinalizeDescrObject *fin = PyObject_New(FinalizeDescrObject, &FinalizeDescr_Type);
    if (fin == NULL) {
        return -1;
    }
    fin->capsule = PyCapsule_New((void *)buffer_finalize, NULL, NULL);
    pa_finalize_capsule = fin->capsule;
    Py_XINCREF(pa_finalize_capsule);
    int rc = fin->capsule == NULL ? -1
                                  : PyDict_SetItemString(PaBuffer_Type.tp_dict,
                                                         "__array_finalize__", (PyObject *)fin);
    Py_DECREF(fin);
    PyType_Modified(&PaBuffer_Type);
    return rc;
}