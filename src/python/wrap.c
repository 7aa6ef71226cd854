/* wrap(): a Buffer over memory another owner provides (an mmap, a PYNQ
 * PynqBuffer, a DRM frame, a pynq_alloc Buffer), with the same views, address
 * arithmetic and lifetime rules as allocate()'s. The owner is held through a
 * buffer export until the wrap is released; the owner's memory is never freed
 * here. */
#include "binding.h"

#include <string.h>

/* An Allocation whose block is another owner's memory. */
typedef struct {
    AllocationObject base;
    Py_buffer view;    /* export of the owner's array: keeps it alive and, for a
                        * pynq_alloc Buffer, its memory from being freed */
    int have_view;
    PyObject *owner;   /* what was wrapped, handed to on_free */
    PyObject *on_free; /* callable or NULL; called once */
} WrapObject;

/* a->backend of wraps given no backend: a stand-in that owns no memory */
static const pa_ops pa_wrap_ops = {.name = "wrap"};

static PyTypeObject PaWrap_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pynq_alloc._Wrap",
    .tp_basicsize = sizeof(WrapObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = PyDoc_STR("Another owner's memory seen as device memory (internal)."),
};

int pa_py_is_wrap(const AllocationObject *a)
{
    return Py_IS_TYPE((PyObject *)a, &PaWrap_Type);
}

/* Called by pa_py_allocation_release with the GIL held: freebuffer() or the
 * last view gone. Releases the export, then runs on_free(owner) once. */
void pa_py_wrap_release(AllocationObject *a)
{
    WrapObject *w = (WrapObject *)a;
    BackendObject *b = a->backend;
    if (b == NULL) {
        return;
    }
    a->backend = NULL;
    memset(&a->block, 0, sizeof(a->block));
    if (w->have_view) {
        w->have_view = 0;
        PyBuffer_Release(&w->view);
    }
    PyObject *owner = w->owner, *on_free = w->on_free;
    w->owner = w->on_free = NULL;
    if (on_free != NULL) {
        /* may run during deallocation or with an exception set: it cannot
         * raise into the caller, so a failure is reported as unraisable */
        PyObject *exc_type, *exc_value, *exc_tb;
        PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
        PyObject *res = PyObject_CallOneArg(on_free, owner);
        if (res == NULL) {
            PyErr_WriteUnraisable(on_free);
        }
        Py_XDECREF(res);
        PyErr_Restore(exc_type, exc_value, exc_tb);
    }
    Py_XDECREF(on_free);
    Py_XDECREF(owner);
    Py_DECREF(b);
}

static BackendObject *pa_wrap_standin(void)
{
    BackendObject *b = PyObject_New(BackendObject, &PaBackend_Type);
    if (b == NULL) {
        return NULL;
    }
    b->be = NULL;
    b->ops = &pa_wrap_ops;
    b->spec = PyUnicode_FromString("wrap");
    b->check = 0;
    b->closing = 1;
    b->pins = 0;
    b->weakreflist = NULL;
    if (b->spec == NULL) {
        Py_DECREF(b);
        return NULL;
    }
    return b;
}

PyObject *pa_py_wrap(PyObject *obj, PyObject *device_address, PyObject *coherent,
                     PyObject *backend, PyObject *on_free)
{
    PyArrayObject *arr = NULL;
    WrapObject *w = NULL;
    PyObject *anchor = NULL, *root = NULL;
    unsigned long long dev;
    int coh = -1;

    if (!PyLong_Check(device_address) || PyBool_Check(device_address)) {
        PyErr_Format(PyExc_TypeError, "wrap(): device_address must be an int, not %.100s",
                     Py_TYPE(device_address)->tp_name);
        return NULL;
    }
    dev = PyLong_AsUnsignedLongLong(device_address);
    if (dev == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_SetString(PyExc_ValueError,
                        "wrap(): device_address must be between 0 and 2**64 - 1");
        return NULL;
    }
    if (coherent != NULL && coherent != Py_None) {
        if (!PyBool_Check(coherent)) {
            PyErr_Format(PyExc_TypeError, "wrap(): coherent must be True or False, not %.100s",
                         Py_TYPE(coherent)->tp_name);
            return NULL;
        }
        coh = coherent == Py_True;
    }
    if (backend != NULL && backend != Py_None && !PaBackend_Check(backend)) {
        PyErr_Format(PyExc_TypeError, "wrap(): backend must be a pynq_alloc Backend or None, not "
                     "%.100s",
                     Py_TYPE(backend)->tp_name);
        return NULL;
    }
    if (on_free == Py_None) {
        on_free = NULL;
    }
    if (on_free != NULL && !PyCallable_Check(on_free)) {
        PyErr_Format(PyExc_TypeError, "wrap(): on_free must be callable, not %.100s",
                     Py_TYPE(on_free)->tp_name);
        return NULL;
    }
    /* the owner's memory as an array: no copy (a list would be one) */
    if (!PyObject_CheckBuffer(obj) && !PyArray_Check(obj) &&
        !PyObject_HasAttrString(obj, "__array_interface__")) {
        PyErr_Format(PyExc_TypeError,
                     "wrap(): %.100s provides no memory (it needs the buffer protocol or "
                     "__array_interface__, as mmap, numpy arrays and PYNQ buffers have)",
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    if (PyArray_Check(obj) || PyObject_HasAttrString(obj, "__array_interface__")) {
        arr = (PyArrayObject *)PyArray_FromAny(obj, NULL, 0, 0, 0, NULL);
    } else {
        /* through a memoryview: NumPy would copy bytes into a string scalar */
        PyObject *mv = PyMemoryView_FromObject(obj);
        arr = mv != NULL ? (PyArrayObject *)PyArray_FromAny(mv, NULL, 0, 0, 0, NULL) : NULL;
        Py_XDECREF(mv);
    }
    if (arr == NULL) {
        return NULL;
    }
    if ((PyObject *)arr != obj && PyArray_CHKFLAGS(arr, NPY_ARRAY_OWNDATA)) {
        PyErr_Format(PyExc_TypeError,
                     "wrap(): %.100s would be copied, not wrapped; pass the object that owns "
                     "the memory",
                     Py_TYPE(obj)->tp_name);
        goto fail;
    }
    if (PyDataType_REFCHK(PyArray_DESCR(arr))) {
        PyErr_SetString(PyExc_TypeError,
                        "wrap(): the memory holds Python objects; device memory can only hold "
                        "plain data");
        goto fail;
    }

    w = PyObject_New(WrapObject, &PaWrap_Type);
    if (w == NULL) {
        goto fail;
    }
    AllocationObject *a = &w->base;
    pa_py_allocation_init(a); /* another owner's memory: never listed as a backend's block */
    w->have_view = 0;
    w->owner = NULL;
    w->on_free = NULL;
    /* the export is what stops a pynq_alloc owner's freebuffer() meanwhile */
    if (PyObject_GetBuffer((PyObject *)arr, &w->view, PyBUF_FULL_RO) < 0) {
        goto fail;
    }
    w->have_view = 1;

    char *lo, *hi, *data = PyArray_BYTES(arr);
    pa_py_extent(arr, &lo, &hi);
    uint64_t lead = (uint64_t)(data - lo);
    if (dev < lead) {
        PyErr_Format(PyExc_ValueError,
                     "wrap(): device_address 0x%llx is the first element's; with negative "
                     "strides the memory starts %llu bytes lower, below address 0",
                     dev, (unsigned long long)lead);
        goto fail;
    }
    AllocationObject *u = NULL;
    if (PaBuffer_Check(arr)) {
        u = ((BufferObject *)arr)->alloc;
        if (u != NULL && u->backend == NULL) {
            u = NULL;
        }
    }
    if (u != NULL) {
        /* a pynq_alloc Buffer: the wrap shares its block, so flush()/invalidate()
         * go to its backend (sim's device side, a kernel sync) */
        uint64_t own = u->block.device_address + (uint64_t)(data - (char *)u->block.cpu);
        if (dev != own) {
            PyErr_Format(PyExc_ValueError,
                         "wrap(): this pynq_alloc Buffer's device address is 0x%llx, not 0x%llx",
                         (unsigned long long)own, dev);
            goto fail;
        }
        if (backend != NULL && backend != Py_None && backend != (PyObject *)u->backend) {
            PyErr_Format(PyExc_ValueError,
                         "wrap(): the Buffer comes from backend %U, not from the backend given",
                         u->backend->spec);
            goto fail;
        }
        if (coh == 0 && u->block.coherent) {
            coh = 1; /* coherent memory needs no maintenance whatever was asked */
        }
        if (coh == 1 && !u->block.coherent) {
            PyErr_SetString(PyExc_ValueError,
                            "wrap(): coherent=True over a non-coherent (cacheable) Buffer: its "
                            "flush()/invalidate() would be skipped; leave coherent out");
            goto fail;
        }
        a->block = u->block;
        Py_INCREF(u->backend);
        a->backend = u->backend;
    } else {
        pa_adopt(lo, dev - lead, (size_t)(hi - lo), coh != 0, &a->block);
        if (backend != NULL && backend != Py_None) {
            Py_INCREF(backend);
            a->backend = (BackendObject *)backend;
        } else if ((a->backend = pa_wrap_standin()) == NULL) {
            goto fail;
        }
    }
    Py_INCREF(obj);
    w->owner = obj;

    PyArray_Descr *descr = PyArray_DESCR(arr);
    int flags = PyArray_FLAGS(arr) & (NPY_ARRAY_WRITEABLE | NPY_ARRAY_ALIGNED);
    Py_INCREF(descr);
    anchor = PyArray_NewFromDescr(&PyArray_Type, descr, PyArray_NDIM(arr), PyArray_DIMS(arr),
                                  PyArray_STRIDES(arr), data, flags, NULL);
    if (anchor == NULL) {
        goto fail;
    }
    if (PyArray_SetBaseObject((PyArrayObject *)anchor, (PyObject *)w) < 0) {
        w = NULL; /* stolen */
        goto fail;
    }
    w = NULL; /* the anchor owns it now */
    Py_INCREF(descr);
    root = PyArray_NewFromDescr(&PaBuffer_Type, descr, PyArray_NDIM(arr), PyArray_DIMS(arr),
                                PyArray_STRIDES(arr), data, flags, NULL);
    if (root == NULL) {
        goto fail;
    }
    if (PyArray_SetBaseObject((PyArrayObject *)root, anchor) < 0) {
        anchor = NULL; /* stolen */
        goto fail;
    }
    a = (AllocationObject *)PyArray_BASE((PyArrayObject *)anchor);
    a->anchor = anchor;
    a->root = root;
    pa_py_link((BufferObject *)root, a);
    Py_XINCREF(on_free); /* only now: a wrap that failed to build frees nothing of theirs */
    ((WrapObject *)a)->on_free = on_free;
    Py_DECREF(arr);
    return root;

fail:
    Py_XDECREF(root);
    Py_XDECREF(anchor);
    if (w != NULL) {
        if (w->base.backend == NULL && w->have_view) {
            /* not yet complete: release what pa_py_wrap_release would not */
            w->have_view = 0;
            PyBuffer_Release(&w->view);
        }
        Py_DECREF(w);
    }
    Py_DECREF(arr);
    return NULL;
}

int pa_py_wrap_ready(void)
{
    PaWrap_Type.tp_base = &PaAllocation_Type;
    return PyType_Ready(&PaWrap_Type);
}
