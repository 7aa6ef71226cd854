/* Allocation: the object that owns one core block, and the lifetime rules
 * around it. Root Buffer -> anchor ndarray -> Allocation; views keep the root
 * alive, plain ndarray views of the root keep the anchor alive, so the block
 * is freed when the last of them is gone. freebuffer() counts all of them. */
#include "binding.h"

#include <numpy/arrayscalars.h>

#include <string.h>

/* what an emptied (freed) array points at: never dereferenced, size 0 */
static _Alignas(64) char pa_empty_data[64];

/* ---------------------------------------------------------------- Allocation */

/* Every allocation that holds a block, newest first (the GIL guards it), so
 * that what is alive can be listed by identity (the pytest plugin's leak
 * check) instead of only counted. O(1) in and out. */
static AllocationObject *pa_live_head;
static unsigned long long pa_live_serial;

void pa_py_allocation_init(AllocationObject *a)
{
    a->backend = NULL;
    a->views = a->exports = a->busy = 0;
    a->anchor = a->root = NULL;
    a->live_prev = a->live_next = NULL;
    a->serial = 0;
    memset(&a->block, 0, sizeof(a->block));
}

void pa_py_allocation_list(AllocationObject *a)
{
    a->serial = ++pa_live_serial;
    a->live_prev = NULL;
    a->live_next = pa_live_head;
    if (pa_live_head != NULL) {
        pa_live_head->live_prev = a;
    }
    pa_live_head = a;
}

static void pa_allocation_unlist(AllocationObject *a)
{
    if (a->serial == 0) {
        return;
    }
    if (a->live_prev != NULL) {
        a->live_prev->live_next = a->live_next;
    } else {
        pa_live_head = a->live_next;
    }
    if (a->live_next != NULL) {
        a->live_next->live_prev = a->live_prev;
    }
    a->live_prev = a->live_next = NULL;
    a->serial = 0;
}

PyObject *pa_py_live_allocations(BackendObject *b)
{
    PyObject *list = PyList_New(0);
    for (AllocationObject *a = pa_live_head; list != NULL && a != NULL; a = a->live_next) {
        if (a->backend != b) {
            continue;
        }
        PyObject *shape = Py_None, *dtype = Py_None, *row;
        Py_INCREF(shape);
        Py_INCREF(dtype);
        if (a->root != NULL) { /* what allocate() returned, while it lives */
            PyArrayObject *r = (PyArrayObject *)a->root;
            Py_SETREF(shape, PyArray_IntTupleFromIntp(PyArray_NDIM(r), PyArray_DIMS(r)));
            Py_SETREF(dtype, PyObject_Str((PyObject *)PyArray_DESCR(r)));
        }
        row = (shape != NULL && dtype != NULL)
                  ? Py_BuildValue("(KKnOO)", a->serial,
                                  (unsigned long long)a->block.device_address,
                                  (Py_ssize_t)a->block.size, shape, dtype)
                  : NULL;
        Py_XDECREF(shape);
        Py_XDECREF(dtype);
        if (row == NULL || PyList_Append(list, row) < 0) {
            Py_CLEAR(list);
        }
        Py_XDECREF(row);
    }
    return list;
}

void pa_py_allocation_release(AllocationObject *a)
{
    BackendObject *b = a->backend;
    if (b == NULL) {
        return;
    }
    pa_allocation_unlist(a);
    if (pa_py_is_wrap(a)) {
        pa_py_wrap_release(a); /* another owner's memory: never pa_free'd (wrap.c) */
        return;
    }
    a->backend = NULL;
    if (b->be != NULL) {
        pa_backend *be = b->be;
        /* pinned: with the GIL released (here for a large block, or by
         * pa_lock while it waits), another thread's settle could otherwise
         * see no buffers and close be while ops->free still runs */
        b->pins++;
        if (a->block.size >= pa_work_gil_bytes() && !b->ops->own_gil_work) {
            Py_BEGIN_ALLOW_THREADS
            pa_free(be, &a->block);
            Py_END_ALLOW_THREADS
        } else {
            pa_free(be, &a->block);
        }
        b->pins--;
        pa_py_backend_settle(b);
    }
    Py_DECREF(b);
}

/* backends of blocks kept for the rest of the process (see allocation_dealloc);
 * held here so that what is kept stays reachable, not leaked */
static PyObject *pa_kept;

static void allocation_dealloc(PyObject *self)
{
    AllocationObject *a = (AllocationObject *)self;
    /* Normally the anchor's own dealloc drops the last reference to us. If
     * the anchor is still alive, ndarray.__setstate__ made it let go of us
     * while arrays (plain views of it) may still point into the block: keep
     * the block (and its backend) for the rest of the process rather than
     * let the next allocation alias it. */
    if (a->anchor != NULL && Py_REFCNT(a->anchor) > 0 && a->backend != NULL) {
        PyObject *exc_type, *exc_value, *exc_tb;
        PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
        if (pa_kept == NULL) {
            pa_kept = PyList_New(0);
        }
        if (pa_kept == NULL || PyList_Append(pa_kept, (PyObject *)a->backend) < 0) {
            PyErr_Clear();
            Py_INCREF(a->backend); /* cannot record it: keep it all the same */
        }
        PyErr_Restore(exc_type, exc_value, exc_tb);
        Py_DECREF(a->backend); /* the list holds it now */
        a->backend = NULL;
    }
    pa_allocation_unlist(a); /* a kept block (above) is nobody's now */
    pa_py_allocation_release(a);
    Py_TYPE(self)->tp_free(self);
}

PyTypeObject PaAllocation_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pynq_alloc._Allocation",
    .tp_basicsize = sizeof(AllocationObject),
    .tp_dealloc = allocation_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = PyDoc_STR("Owns one block of device memory (internal)."),
};

/* the allocation an array's memory comes from, following bases */
static AllocationObject *pa_find_allocation(PyObject *obj)
{
    while (obj != NULL) {
        if (PaBuffer_Check(obj)) {
            return ((BufferObject *)obj)->alloc;
        }
        if (PyObject_TypeCheck(obj, &PaAllocation_Type)) { /* wrap.c's subtype too */
            return (AllocationObject *)obj;
        }
        if (!PyArray_Check(obj)) {
            return NULL;
        }
        obj = PyArray_BASE((PyArrayObject *)obj);
    }
    return NULL;
}

/* Empties an array in place: size 0, read-only, pointing at no device memory. */
static int pa_neuter(PyArrayObject *arr)
{
    PyArrayObject_fields *fa = (PyArrayObject_fields *)arr;
    if (fa->nd == 0) {
        npy_intp *dims = PyDimMem_NEW(2);
        if (dims == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        fa->dimensions = dims;
        fa->strides = dims + 1;
    }
    fa->nd = 1;
    fa->dimensions[0] = 0;
    fa->strides[0] = PyArray_ITEMSIZE(arr);
    fa->data = pa_empty_data;
    PyArray_CLEARFLAGS(arr, NPY_ARRAY_WRITEABLE);
    PyArray_UpdateFlags(arr, NPY_ARRAY_UPDATE_ALL);
    return 0;
}

void pa_py_link(BufferObject *buf, AllocationObject *a)
{
    Py_INCREF(a);
    buf->alloc = a;
    a->views++;
    a->exports += buf->exports; /* taken before it was linked (_array_finalize) */
}

/* The allocation whose memory an array's data pointer lies in, following its
 * bases; NULL for arrays with memory of their own (copies, computed results).
 * Only the data pointer can be checked: NumPy finalizes some views (transpose)
 * before it sets their final strides. An empty view may sit at the end. */
AllocationObject *pa_py_shared_allocation(PyArrayObject *arr, PyObject *parent)
{
    AllocationObject *a = pa_find_allocation(parent);
    if (a == NULL || a->backend == NULL) {
        return NULL;
    }
    char *data = PyArray_BYTES(arr), *start = a->block.cpu;
    return data >= start && data <= start + a->block.size ? a : NULL;
}

/* Links a new Buffer to the allocation of the array it came from when it
 * shares that memory (copies get no address). NumPy calls this for every view,
 * so it is stored as a PyCapsule, which NumPy (1.x and 2.x) calls as a C
 * function instead of a Python-level method call. */
/* ------------------------------------------------------------- freebuffer */

PyObject *pa_py_freebuffer(PyObject *self, PyObject *unused)
{
    (void)unused;
    BufferObject *buf = (BufferObject *)self;
    AllocationObject *a = buf->alloc;
    if (a == NULL) {
        Py_RETURN_NONE; /* already freed, or never device memory: nothing to release */
    }
    if (a->root != self) {
        PyErr_SetString(PyExc_BufferError,
                        "freebuffer() must be called on the Buffer that allocate() returned, not "
                        "on a view of it; a view's memory is released when the buffer and its "
                        "last view are deleted");
        return NULL;
    }
    if (PyArray_BASE((PyArrayObject *)a->anchor) != (PyObject *)a) {
        PyErr_SetString(PyExc_BufferError,
                        "cannot free this buffer: ndarray.__setstate__ was called on its base, so "
                        "views of its memory can no longer be counted; the memory is kept until "
                        "the process exits");
        return NULL;
    }
    Py_ssize_t views = a->views - 1;
    Py_ssize_t plain = Py_REFCNT(a->anchor) - 1; /* np.asarray(buf) & co. refer to the anchor */
    if (views > 0 || plain > 0 || a->exports > 0 || a->busy > 0) {
        PyErr_Format(PyExc_BufferError,
                     "cannot free this buffer: %zd view(s), %zd plain ndarray view(s) and %zd "
                     "buffer export(s) (memoryview) still use its memory%s; delete or release "
                     "them first%s",
                     views, plain, a->exports, a->busy > 0 ? ", and a sync is running" : "",
                     plain > 0 ? " (plain views include np.asarray(buf), views as other ndarray "
                                 "subclasses such as np.recarray, flat iterators and structured "
                                 "scalars)"
                               : "");
        return NULL;
    }
    if (pa_neuter((PyArrayObject *)self) < 0 || pa_neuter((PyArrayObject *)a->anchor) < 0) {
        return NULL;
    }
    buf->freed = 1;
    buf->alloc = NULL;
    Py_CLEAR(buf->address);
    a->views--;
    a->root = NULL;
    pa_py_allocation_release(a);
    Py_DECREF(a);
    Py_RETURN_NONE;
}

/* -------------------------------------------- objects that hold the root
 * The root Buffer's reference count includes every name that refers to it
 * (Jupyter's Out[] history among them), so objects that hold the root itself
 * cannot be counted by freebuffer(). NumPy makes such objects for views as
 * other ndarray subclasses, structured scalars and flat iterators; where they
 * are made through Buffer's own methods they are re-pointed at the anchor,
 * whose reference count freebuffer() does count. */

/* the live allocation when self is its root, else NULL */
AllocationObject *pa_py_root_of(PyObject *self)
{
    AllocationObject *a = ((BufferObject *)self)->alloc;
    return a != NULL && a->root == self && a->anchor != NULL ? a : NULL;
}

/* *slot held the root: make it hold the anchor instead (one owner swapped for
 * another; the object's data pointer is unchanged) */
static void pa_hold_anchor(PyObject **slot, PyObject *root, AllocationObject *a)
{
    if (*slot == root) {
        Py_INCREF(a->anchor);
        *slot = a->anchor;
        Py_DECREF(root);
    }
}

/* a result NumPy made from the root: re-point it at the anchor if it holds
 * the root and is not itself a counted (linked) Buffer view */
PyObject *pa_py_rehome(PyObject *self, PyObject *res)
{
    AllocationObject *a;
    if (res == NULL || (a = pa_py_root_of(self)) == NULL) {
        return res;
    }
    if (PyArray_Check(res)) {
        if (!(PaBuffer_Check(res) && ((BufferObject *)res)->alloc != NULL)) {
            pa_hold_anchor(&((PyArrayObject_fields *)res)->base, self, a);
        }
    } else if (PyArray_IsScalar(res, Void)) {
        pa_hold_anchor(&((PyVoidScalarObject *)res)->base, self, a);
    }
    return res;
}
