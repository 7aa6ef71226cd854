/* allocate(): argument parsing (shape, dtype, align, cacheable) and the
 * main path that makes a root Buffer over a new block. Kept free of
 * Python-level calls: it is measured against numpy.empty. */
#include "binding.h"

#include <string.h>


static int pa_parse_align(PyObject *align, size_t *out)
{
    if (align == NULL || align == Py_None) {
        *out = 4096;
        return 0;
    }
    if (PyBool_Check(align) || !PyIndex_Check(align)) {
        PyErr_Format(PyExc_TypeError, "align must be an int (a power of two), not %.100s",
                     Py_TYPE(align)->tp_name);
        return -1;
    }
    Py_ssize_t v = PyNumber_AsSsize_t(align, PyExc_OverflowError);
    if (v == -1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError,
                         "align must be a power of two between 1 and 2**30 bytes, got %R",
                         align);
        }
        return -1;
    }
    /* beyond 1 GiB nothing real needs it, and it would only waste the pool */
    if (v <= 0 || (v & (v - 1)) != 0 || v > ((Py_ssize_t)1 << 30)) {
        PyErr_Format(PyExc_ValueError,
                     "align must be a power of two between 1 and 2**30 bytes, got %zd", v);
        return -1;
    }
    *out = (size_t)v;
    return 0;
}

/* address_bits=N: every byte below 2**N; max_addr = 2**N - 1 (no limit from 64 on) */
static int pa_parse_address_bits(PyObject *bits, uint64_t *max_addr)
{
    *max_addr = UINT64_MAX;
    if (bits == NULL || bits == Py_None) {
        return 0;
    }
    if (PyBool_Check(bits) || !PyLong_Check(bits)) {
        PyErr_Format(PyExc_TypeError, "address_bits must be an int (e.g. 32), not %.100s",
                     Py_TYPE(bits)->tp_name);
        return -1;
    }
    int overflow;
    long n = PyLong_AsLongAndOverflow(bits, &overflow);
    if (n == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow != 0 || n < 12 || n > 64) {
        PyErr_Format(PyExc_ValueError,
                     "address_bits must be between 12 and 64 (a DMA mask's width, e.g. 32), "
                     "got %R",
                     bits);
        return -1;
    }
    if (n < 64) {
        *max_addr = ((uint64_t)1 << n) - 1;
    }
    return 0;
}

int pa_py_parse_cacheable(PyObject *cacheable, unsigned *flags)
{
    *flags = 0;
    if (cacheable == NULL || cacheable == Py_None) {
        return 0;
    }
    if (cacheable == Py_True || cacheable == Py_False) {
        *flags = cacheable == Py_True ? PA_CACHED : PA_UNCACHED;
        return 0;
    }
    if (PyLong_Check(cacheable)) {
        int overflow;
        long v = PyLong_AsLongAndOverflow(cacheable, &overflow);
        if (v == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (overflow == 0 && (v == 0 || v == 1)) {
            *flags = v ? PA_CACHED : PA_UNCACHED;
            return 0;
        }
        PyErr_Format(PyExc_ValueError,
                     "cacheable must be None, True, False, 0 or 1, got %R", cacheable);
        return -1;
    }
    /* a truth test would make cacheable='no' mean True */
    PyErr_Format(PyExc_TypeError,
                 "cacheable must be None (the backend's default), True, False, 0 or 1, not "
                 "%.100s",
                 Py_TYPE(cacheable)->tp_name);
    return -1;
}

/* numpy.ndarray(shape, 'U') gives U1, 'S' S1; follow it */
static PyArray_Descr *pa_sized_descr(PyArray_Descr *d)
{
    if (PyDataType_ELSIZE(d) != 0 || (d->type_num != NPY_STRING && d->type_num != NPY_UNICODE)) {
        return d;
    }
    PyArray_Descr *n = PyArray_DescrNewFromType(d->type_num);
    Py_DECREF(d);
    if (n != NULL) {
        PyDataType_SET_ELSIZE(n, n->type_num == NPY_UNICODE ? 4 : 1);
    }
    return n;
}

/* dtype conversion cache: the same dtype objects ('u4', np.uint32) come back
 * on every call, so remember what a few of them converted to, by identity */
#define PA_DTYPE_CACHE 8
static struct {
    PyObject *key;
    PyArray_Descr *descr;
} pa_dtype_cache[PA_DTYPE_CACHE];
static unsigned pa_dtype_next;

static PyArray_Descr *pa_convert_dtype(PyObject *dtype)
{
    PyArray_Descr *descr = NULL;
    if (dtype == NULL) {
        return PyArray_DescrFromType(NPY_UINT32); /* PYNQ's default */
    }
    if (PyArray_DescrCheck(dtype)) {
        Py_INCREF(dtype);
        return (PyArray_Descr *)dtype;
    }
    for (unsigned i = 0; i < PA_DTYPE_CACHE; i++) {
        if (pa_dtype_cache[i].key == dtype) {
            Py_INCREF(pa_dtype_cache[i].descr);
            return pa_dtype_cache[i].descr;
        }
    }
    if (!PyArray_DescrConverter(dtype, &descr)) {
        return NULL;
    }
    /* only immutable keys: a str or a type always converts the same way */
    if (PyUnicode_CheckExact(dtype) || PyType_Check(dtype)) {
        unsigned i = pa_dtype_next++ % PA_DTYPE_CACHE;
        Py_INCREF(dtype);
        Py_INCREF(descr);
        Py_XSETREF(pa_dtype_cache[i].key, dtype);
        Py_XSETREF(pa_dtype_cache[i].descr, descr);
    }
    return descr;
}

#define PA_MAXDIMS 64 /* NumPy 2's limit; NumPy 1.x's (32) is lower */
/* Tuples of up to this many ints are converted here; longer ones go to NumPy's
 * converter, which enforces the limit of the NumPy that runs (the headers'
 * NPY_MAXDIMS is NumPy 2's 64 even when NumPy 1.x runs, whose limit is 32). */
#define PA_FAST_DIMS 32

/* shape: ints and tuples of ints directly, anything else (and anything odd,
 * e.g. out of range) through NumPy's converter so errors are NumPy's */
static int pa_convert_shape(PyObject *shape, npy_intp *dims, int *nd)
{
    if (PyLong_CheckExact(shape)) {
        dims[0] = PyLong_AsSsize_t(shape);
        if (dims[0] != -1 || !PyErr_Occurred()) {
            *nd = 1;
            return 0;
        }
        PyErr_Clear();
    } else if (PyTuple_CheckExact(shape) && PyTuple_GET_SIZE(shape) <= PA_FAST_DIMS) {
        Py_ssize_t n = PyTuple_GET_SIZE(shape), i = 0;
        for (; i < n && PyLong_CheckExact(PyTuple_GET_ITEM(shape, i)); i++) {
            dims[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(shape, i));
            if (dims[i] == -1 && PyErr_Occurred()) {
                PyErr_Clear();
                break;
            }
        }
        if (i == n) {
            *nd = (int)n;
            return 0;
        }
    }
    PyArray_Dims d = {NULL, 0};
    if (!PyArray_IntpConverter(shape, &d)) {
        return -1;
    }
    if (d.len > PA_MAXDIMS) { /* the converter enforces NPY_MAXDIMS; keep our array safe anyway */
        PyDimMem_FREE(d.ptr);
        PyErr_Format(PyExc_ValueError, "maximum supported dimension for an ndarray is %d",
                     PA_MAXDIMS);
        return -1;
    }
    if (d.len > 0) {
        memcpy(dims, d.ptr, (size_t)d.len * sizeof(npy_intp));
    }
    *nd = d.len;
    PyDimMem_FREE(d.ptr);
    return 0;
}

PyObject *pa_py_allocate(BackendObject *b, PyObject *shape, PyObject *dtype, PyObject *cacheable,
                         PyObject *align, PyObject *address_bits)
{
    uint64_t max_addr;
    npy_intp dimv[PA_MAXDIMS];
    PyArray_Dims dims = {dimv, 0};
    PyArray_Descr *descr = NULL;
    AllocationObject *a = NULL;
    PyObject *anchor = NULL, *root = NULL;
    size_t alignment, nbytes;
    unsigned flags;
    pa_err err;

    if (b->be == NULL || b->closing) {
        PyErr_Format(PyExc_ValueError, "backend %U is closed", b->spec);
        return NULL;
    }
    if (pa_convert_shape(shape, dimv, &dims.len) < 0) {
        return NULL;
    }
    descr = pa_convert_dtype(dtype);
    if (descr == NULL) {
        goto fail;
    }
    descr = pa_sized_descr(descr);
    if (descr == NULL) {
        goto fail;
    }
    if (PyDataType_HASFIELDS(descr)) {
        /* dtype.names can be assigned: each buffer gets a descriptor of its own */
        Py_SETREF(descr, PyArray_DescrNew(descr));
        if (descr == NULL) {
            goto fail;
        }
    }
    if (PyDataType_REFCHK(descr)) {
        PyErr_Format(PyExc_TypeError,
                     "dtype %R holds Python objects; device memory can only hold plain data",
                     (PyObject *)descr);
        goto fail;
    }
    if (pa_parse_align(align, &alignment) < 0 || pa_py_parse_cacheable(cacheable, &flags) < 0 ||
        pa_parse_address_bits(address_bits, &max_addr) < 0) {
        goto fail;
    }
    nbytes = (size_t)PyDataType_ELSIZE(descr);
    for (int i = 0; i < dims.len; i++) {
        if (dims.ptr[i] < 0) {
            PyErr_SetString(PyExc_ValueError, "negative dimensions are not allowed");
            goto fail;
        }
        if (__builtin_mul_overflow(nbytes, (size_t)dims.ptr[i], &nbytes) ||
            nbytes > (size_t)NPY_MAX_INTP) {
            PyErr_SetString(PyExc_ValueError,
                            "array is too big; `arr.size * arr.dtype.itemsize` is larger than "
                            "the maximum possible size");
            goto fail;
        }
    }
    a = PyObject_New(AllocationObject, &PaAllocation_Type);
    if (a == NULL) {
        goto fail;
    }
    pa_py_allocation_init(a);

    /* pa_alloc may release the GIL while it waits for the backend lock
     * (pa_set_waiter): the pin keeps close() + the last free from closing
     * the backend meanwhile */
    b->pins++;
    int rc;
    if (nbytes >= pa_work_gil_bytes() && !b->ops->own_gil_work) {
        /* a kernel allocator zeroing a large block lets other threads run */
        pa_backend *be = b->be;
        Py_BEGIN_ALLOW_THREADS
        rc = pa_alloc_below(be, nbytes, alignment, flags, max_addr, &a->block, &err);
        Py_END_ALLOW_THREADS
    } else {
        rc = pa_alloc_below(b->be, nbytes, alignment, flags, max_addr, &a->block, &err);
    }
    b->pins--;
    if (rc < 0) {
        pa_py_backend_settle(b);
        pa_py_raise(rc, &err);
        goto fail;
    }
    Py_INCREF(b);
    a->backend = b;
    pa_py_allocation_list(a);

    Py_INCREF(descr);
    anchor = PyArray_NewFromDescr(&PyArray_Type, descr, dims.len, dims.ptr, NULL, a->block.cpu,
                                  NPY_ARRAY_CARRAY, NULL);
    if (anchor == NULL) {
        goto fail;
    }
    if (PyArray_SetBaseObject((PyArrayObject *)anchor, (PyObject *)a) < 0) {
        goto fail; /* the reference to a was stolen even on failure */
    }
    root = PyArray_NewFromDescr(&PaBuffer_Type, descr, dims.len, dims.ptr, NULL, a->block.cpu,
                                NPY_ARRAY_CARRAY, NULL);
    descr = NULL;
    if (root == NULL) {
        goto fail_anchor;
    }
    if (PyArray_SetBaseObject((PyArrayObject *)root, anchor) < 0) {
        anchor = NULL;
        goto fail_anchor;
    }
    a->anchor = anchor;
    a->root = root;
    pa_py_link((BufferObject *)root, a);
    return root;

fail_anchor:
    Py_XDECREF(root);
    Py_XDECREF(anchor);
    return NULL;
fail:
    if (anchor != NULL) {
        Py_DECREF(anchor);
    } else {
        Py_XDECREF(a);
    }
    Py_XDECREF(descr);
    return NULL;
}
