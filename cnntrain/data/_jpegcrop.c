/* Region-of-interest JPEG decoding with libjpeg-turbo, for cnntrain's training views.
 *
 * A random-resized crop of a photo uses a part of it; a full decode pays for all of it.
 * libjpeg-turbo can do less (its jpeg_crop_scanline and jpeg_skip_scanlines, 1.5+):
 *   - rows above the crop are entropy-decoded but not inverse-transformed, upsampled
 *     or colour-converted;
 *   - only the iMCU columns that hold the crop are inverse-transformed and converted;
 *   - rows below the crop are not read at all: decoding stops at the crop's last row;
 *   - with a reduction of 2, 4 or 8, the inverse DCT runs at that reduced size.
 * The pixels are those of a full decode at the same scale (same IDCT, same upsampling).
 *
 * decode(data, top, left, height, width, reduction)
 *     -> (bytearray of height*width*3 RGB bytes, row-major HWC, height, width)
 * The box is given in the coordinates of the image scaled by 1/reduction; height or
 * width 0 means the whole scaled image. Raises ValueError on a decoding error and on any
 * libjpeg warning (corrupt or truncated data, odd markers): the caller then decodes the
 * file with a full decoder, which gives its own verdict on it.
 *
 * The GIL is released while libjpeg runs, so threads can decode in parallel.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf escape;
    char message[JMSG_LENGTH_MAX];
} ErrorManager;

static void on_error(j_common_ptr cinfo) {
    ErrorManager *err = (ErrorManager *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, err->message);
    longjmp(err->escape, 1);
}

/* Warnings (level -1) mean damaged data that libjpeg would paper over with grey; refuse
 * them so that the full decoder judges the file. Trace messages (level >= 0) are ignored. */
static void on_message(j_common_ptr cinfo, int level) {
    if (level < 0) on_error(cinfo);
}

static void silent(j_common_ptr cinfo) { (void)cinfo; }

typedef struct {
    const unsigned char *data;
    unsigned long size;
    int top, left, height, width, reduction;
    unsigned char *out; /* allocated by the caller once the size is known */
} Job;

/* Phase 1: read the header, set the scale, start the decompressor and check the box.
 * Phase 2 (decode_rows) fills job->out. Both run without the GIL. Returns 0 on success. */
static int start(struct jpeg_decompress_struct *cinfo, Job *job, char *why) {
    jpeg_mem_src(cinfo, job->data, job->size);
    jpeg_read_header(cinfo, TRUE);
    cinfo->out_color_space = JCS_RGB; /* grey is expanded; CMYK/YCCK raise (not supported) */
    cinfo->scale_num = 1;
    cinfo->scale_denom = (unsigned int)job->reduction;
    jpeg_start_decompress(cinfo);
    int full_w = (int)cinfo->output_width, full_h = (int)cinfo->output_height;
    if (job->height == 0 || job->width == 0) {
        job->top = job->left = 0;
        job->height = full_h;
        job->width = full_w;
    }
    if (job->top < 0 || job->left < 0 || job->height < 1 || job->width < 1 ||
        job->top + job->height > full_h || job->left + job->width > full_w) {
        snprintf(why, JMSG_LENGTH_MAX, "box (%d, %d, %d, %d) outside the %dx%d image at 1/%d scale",
                 job->top, job->left, job->height, job->width, full_w, full_h, job->reduction);
        return -1;
    }
    return 0;
}

static void decode_rows(struct jpeg_decompress_struct *cinfo, Job *job, unsigned char *row) {
    /* One column of margin each side: chroma upsampling at the edge of a cropped region
     * replicates the edge instead of reading the neighbour, so the region's outer columns
     * are not the full decode's. crop_scanline then widens to whole iMCU columns. */
    int first = job->left > 0 ? job->left - 1 : 0;
    int last = job->left + job->width < (int)cinfo->output_width ? job->left + job->width + 1
                                                                  : (int)cinfo->output_width;
    JDIMENSION x = (JDIMENSION)first, w = (JDIMENSION)(last - first);
    if (w < cinfo->output_width) jpeg_crop_scanline(cinfo, &x, &w);
    size_t skip = (size_t)(job->left - (int)x) * 3, row_bytes = (size_t)job->width * 3;
    if (job->top > 0) jpeg_skip_scanlines(cinfo, (JDIMENSION)job->top);
    for (int y = 0; y < job->height; y++) {
        JSAMPROW rows[1] = {row};
        if (jpeg_read_scanlines(cinfo, rows, 1) != 1) {
            ERREXIT(cinfo, JERR_INPUT_EMPTY);
        }
        memcpy(job->out + (size_t)y * row_bytes, row + skip, row_bytes);
    }
}

static PyObject *decode(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view;
    Job job;
    if (!PyArg_ParseTuple(args, "y*iiiii", &view, &job.top, &job.left, &job.height, &job.width,
                          &job.reduction))
        return NULL;
    if (job.reduction != 1 && job.reduction != 2 && job.reduction != 4 && job.reduction != 8) {
        PyBuffer_Release(&view);
        PyErr_Format(PyExc_ValueError, "reduction must be 1, 2, 4 or 8, not %d", job.reduction);
        return NULL;
    }
    job.data = view.buf;
    job.size = (unsigned long)view.len;
    job.out = NULL;

    struct jpeg_decompress_struct cinfo;
    ErrorManager err;
    char why[JMSG_LENGTH_MAX] = "";
    PyObject *result = NULL;
    unsigned char *volatile row = NULL;
    int failed = 0;
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error;
    err.pub.emit_message = on_message;
    err.pub.output_message = silent;
    err.message[0] = '\0';
    jpeg_create_decompress(&cinfo);

    PyThreadState *state = PyEval_SaveThread();
    if (setjmp(err.escape)) {
        failed = 1;
    } else if (start(&cinfo, &job, why) != 0) {
        failed = 2;
    }
    PyEval_RestoreThread(state);

    if (!failed) {
        result = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)job.height * job.width * 3);
        row = result ? PyMem_RawMalloc((size_t)cinfo.output_width * 3) : NULL;
        if (result && !row) PyErr_NoMemory();
        if (row) {
            job.out = (unsigned char *)PyByteArray_AS_STRING(result);
            state = PyEval_SaveThread();
            if (setjmp(err.escape)) {
                failed = 1;
            } else {
                decode_rows(&cinfo, &job, row);
            }
            PyEval_RestoreThread(state);
        }
    }
    jpeg_destroy_decompress(&cinfo); /* also abandons the rows below the box unread */
    PyMem_RawFree(row);
    PyBuffer_Release(&view);
    if (failed || !row) {
        Py_XDECREF(result);
        if (failed == 1) PyErr_Format(PyExc_ValueError, "JPEG: %s", err.message);
        else if (failed == 2) PyErr_Format(PyExc_ValueError, "JPEG: %s", why);
        return NULL;
    }
    return Py_BuildValue("Nii", result, job.height, job.width);
}

static PyObject *version(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
#ifdef LIBJPEG_TURBO_VERSION
#define CNNTRAIN_STR2(x) #x
#define CNNTRAIN_STR(x) CNNTRAIN_STR2(x)
    return PyUnicode_FromString("libjpeg-turbo " CNNTRAIN_STR(LIBJPEG_TURBO_VERSION));
#else
    return PyUnicode_FromFormat("libjpeg %d", JPEG_LIB_VERSION);
#endif
}

static PyMethodDef methods[] = {
    {"decode", decode, METH_VARARGS,
     "decode(data, top, left, height, width, reduction) -> (bytearray RGB HWC, height, width)"},
    {"version", version, METH_NOARGS, "the libjpeg this module was built against"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_jpegcrop",
                                    "Region-of-interest JPEG decoding with libjpeg-turbo.", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__jpegcrop(void) { return PyModule_Create(&module); }
