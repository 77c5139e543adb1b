/*
 * The streaming polyphase FIR of gateway/audio/resample.py, in one C call per chunk.
 *
 * Why: the numpy form costs five to seven microseconds a 20 ms frame when measured alone, but
 * 25 us under load (50 calls, benchmarks/README.md): its eight numpy calls a chunk each walk
 * numpy's dispatch code, which other work has pushed out of the CPU's caches by the next frame.
 * This does the same arithmetic in one call with a small, hot loop.
 *
 * Same output, bit for bit. The taps are multiples of 2**-24 (resample.py quantises them), the
 * samples are integers, so every product and every partial sum is exact in a double: the order
 * of the additions cannot change a bit. That lets the dot product below run four (or, with
 * AVX2, eight) lanes in any order and still equal numpy's matrix product exactly; rounding
 * (rint: half to even, as np.rint) and clamping then match too. tests/test_resample_kernel.py
 * compares the two on random audio cut into random chunks.
 *
 * Output m of the stream is  sum_i taps[m*M - i*L] * x[i]  (x[i] = 0 for i < 0), released once
 * the input holds (m // L + 1) * M samples: exactly what the numpy form releases.
 *
 * Optional at install: without a C compiler the package installs without it and resample.py
 * uses numpy (pyproject.toml: optional = true); the container image requires it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define PAD 4 /* taps per phase are padded to a multiple of this (zeros: exact, harmless) */
#define MAX_FACTOR 64
/* Room beyond the filter's history, in input samples: four 20 ms frames at 24 kHz. When it is
 * used up, the history moves to the front (a copy of at most a few hundred doubles). */
#define SLACK 2048

/* The output loop, stamped out for a vector width: NAME(phases, width, up, down, buf, first,
 * m, count, o) writes outputs m .. m+count-1 as PCM16LE into o. buf[j] holds stream sample
 * first + j. Four accumulators of LANES doubles keep the adds off one dependency chain; their
 * order is free (every sum is exact, above), and so is the FMA a compiler may fuse. */
/* One unaligned vector load (memcpy: no aliasing or alignment assumptions; one instruction). */
#define LOAD(NAME, p) (__extension__({ NAME##_vec v_; memcpy(&v_, (p), sizeof v_); v_; }))

#define DEFINE_FIR_RUN(NAME, LANES, ATTRIBUTES)                                                  \
    typedef double NAME##_vec __attribute__((vector_size(LANES * sizeof(double))));            \
    ATTRIBUTES static void NAME(const double *restrict phases, Py_ssize_t width, int up,      \
                                int down, const double *restrict buf, long long first,         \
                                long long m, Py_ssize_t count, unsigned char *restrict o)      \
    {                                                                                          \
        /* Output m's time at the high rate L * in_rate is m*M = i_max*L + phase; both        \
         * advance without a division (a 64-bit idiv per output cost more than its sum). */   \
        long long i_max = m * down / up;                                                       \
        int phase = (int)(m * down - i_max * up);                                              \
        for (Py_ssize_t j = 0; j < count; j++) {                                               \
            const double *taps = phases + phase * width;                                       \
            const double *x = buf + (i_max - first - width + 1);                               \
            phase += down;                                                                     \
            while (phase >= up) {                                                              \
                phase -= up;                                                                   \
                i_max++;                                                                       \
            }                                                                                  \
            NAME##_vec a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};                                     \
            Py_ssize_t k = 0;                                                                      \
            for (; k + 4 * LANES <= width; k += 4 * LANES) {                                       \
                a0 += LOAD(NAME, taps + k) * LOAD(NAME, x + k);                                    \
                a1 += LOAD(NAME, taps + k + LANES) * LOAD(NAME, x + k + LANES);                    \
                a2 += LOAD(NAME, taps + k + 2 * LANES) * LOAD(NAME, x + k + 2 * LANES);            \
                a3 += LOAD(NAME, taps + k + 3 * LANES) * LOAD(NAME, x + k + 3 * LANES);            \
            }                                                                                      \
            /* Fewer than four vectors left (widths are multiples of PAD). */                      \
            if (k + LANES <= width) {                                                              \
                a0 += LOAD(NAME, taps + k) * LOAD(NAME, x + k);                                    \
                k += LANES;                                                                        \
            }                                                                                      \
            if (k + LANES <= width) {                                                              \
                a1 += LOAD(NAME, taps + k) * LOAD(NAME, x + k);                                    \
                k += LANES;                                                                        \
            }                                                                                      \
            if (k + LANES <= width) {                                                              \
                a2 += LOAD(NAME, taps + k) * LOAD(NAME, x + k);                                    \
            }                                                                                      \
            NAME##_vec total = (a0 + a1) + (a2 + a3);                                              \
            double y = 0.0;                                                                    \
            for (int lane = 0; lane < LANES; lane++) {                                         \
                y += total[lane];                                                              \
            }                                                                                  \
            y = rint(y);                                                                       \
            if (y > 32767.0) {                                                                 \
                y = 32767.0;                                                                   \
            } else if (y < -32768.0) {                                                         \
                y = -32768.0;                                                                  \
            }                                                                                  \
            uint16_t u = (uint16_t)(int16_t)y;                                                 \
            o[2 * j] = (unsigned char)(u & 0xff);                                              \
            o[2 * j + 1] = (unsigned char)(u >> 8);                                            \
        }                                                                                      \
    }

typedef void (*fir_run_fn)(const double *restrict, Py_ssize_t, int, int, const double *restrict,
                           long long, long long, Py_ssize_t, unsigned char *restrict);

/* Two doubles a vector: SSE2 (every x86-64) and NEON registers. */
DEFINE_FIR_RUN(fir_run_2, 2, )

/* Four with AVX2 where the CPU has it (x86-64 with GCC or clang; picked at import). */
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_AVX2_BUILD 1
DEFINE_FIR_RUN(fir_run_4, 4, __attribute__((target("avx2,fma"))))
#endif

static fir_run_fn fir_run_best = fir_run_2;

typedef struct {
    PyObject_HEAD
    int up;               /* L */
    int down;             /* M */
    Py_ssize_t width;     /* taps per phase, padded to a multiple of LANES */
    double *phases;       /* up * width: phase p's taps, oldest input first, zeros in front */
    double *buf;          /* input samples; buf[j] is stream sample first + j */
    Py_ssize_t capacity;  /* of buf, in samples */
    Py_ssize_t fill;      /* samples held in buf */
    long long first;      /* stream index of buf[0] (negative: the silence before the stream) */
    long long samples_in;
    long long samples_out;
    fir_run_fn run;       /* the output loop's build */
    int has_odd;          /* a dangling odd byte waits for its partner */
    unsigned char odd;
} Kernel;

static void
kernel_start(Kernel *self)
{
    /* The filter starts from silence: width zeros stand for the samples before the stream. */
    memset(self->buf, 0, (size_t)self->width * sizeof(double));
    self->fill = self->width;
    self->first = -(long long)self->width;
    self->samples_in = 0;
    self->samples_out = 0;
    self->has_odd = 0;
}

static int
kernel_init(Kernel *self, PyObject *args, PyObject *kwds)
{
    static char *keywords[] = {"taps", "up", "down", "lanes", NULL};
    Py_buffer taps;
    int up, down, lanes = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*ii|$i", keywords, &taps, &up, &down,
                                     &lanes)) {
        return -1;
    }
    /* lanes: 0 = the best build this CPU runs; 2 or 4 = that one (the tests compare them). */
    fir_run_fn run = fir_run_best;
    if (lanes == 2) {
        run = fir_run_2;
    }
#ifdef HAVE_AVX2_BUILD
    else if (lanes == 4 && fir_run_best == fir_run_4) {
        run = fir_run_4;
    }
#endif
    else if (lanes != 0) {
        PyBuffer_Release(&taps);
        PyErr_Format(PyExc_ValueError, "no %d-lane build on this CPU", lanes);
        return -1;
    }
    Py_ssize_t count = taps.len / (Py_ssize_t)sizeof(double);
    if (up < 1 || down < 1 || up > MAX_FACTOR || down > MAX_FACTOR || count < 1
        || taps.len % (Py_ssize_t)sizeof(double) != 0) {
        PyBuffer_Release(&taps);
        PyErr_SetString(PyExc_ValueError,
                        "taps must be float64 bytes; up and down must lie in 1..64");
        return -1;
    }
    const double *h = (const double *)taps.buf;
    Py_ssize_t per_phase = (count + up - 1) / up;
    Py_ssize_t width = (per_phase + PAD - 1) / PAD * PAD;
    PyMem_Free(self->phases);
    PyMem_Free(self->buf);
    self->buf = NULL;
    self->phases = PyMem_Calloc((size_t)(up * width), sizeof(double));
    self->capacity = width + SLACK;
    self->buf = PyMem_Malloc((size_t)self->capacity * sizeof(double));
    if (self->phases == NULL || self->buf == NULL) {
        PyBuffer_Release(&taps);
        PyErr_NoMemory();
        return -1;
    }
    /* Output m with p = (m*M) % L pairs taps p, p+L, p+2L, ... with inputs i_max, i_max-1, ...
     * (i_max = m*M // L); stored reversed so the inputs are read oldest first. */
    for (int p = 0; p < up; p++) {
        for (Py_ssize_t j = 0; p + j * up < count; j++) {
            self->phases[p * width + width - 1 - j] = h[p + j * up];
        }
    }
    PyBuffer_Release(&taps);
    self->up = up;
    self->down = down;
    self->width = width;
    self->run = run;
    kernel_start(self);
    return 0;
}

static void
kernel_dealloc(Kernel *self)
{
    PyMem_Free(self->phases);
    PyMem_Free(self->buf);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Room for `incoming` more samples: drop what no output still needs, then grow if short. */
static int
kernel_make_room(Kernel *self, Py_ssize_t incoming)
{
    long long next_max = self->samples_out * self->down / self->up;
    Py_ssize_t keep_from = (Py_ssize_t)(next_max - self->width + 1 - self->first);
    if (keep_from > 0) {
        memmove(self->buf, self->buf + keep_from,
                (size_t)(self->fill - keep_from) * sizeof(double));
        self->fill -= keep_from;
        self->first += keep_from;
    }
    if (self->fill + incoming > self->capacity) {
        Py_ssize_t capacity = self->capacity * 2;
        if (capacity < self->fill + incoming) {
            capacity = self->fill + incoming;
        }
        double *grown = PyMem_Realloc(self->buf, (size_t)capacity * sizeof(double));
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        self->buf = grown;
        self->capacity = capacity;
    }
    return 0;
}

static inline double
sample_at(const unsigned char *p)
{
    return (double)(int16_t)(uint16_t)(p[0] | (p[1] << 8));
}

/* The slot for the next input sample, with room for `count` of them; NULL (an error set)
 * if the kernel was not initialised or memory ran out. */
static double *
kernel_reserve(Kernel *self, Py_ssize_t count)
{
    if (self->phases == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Kernel.__init__ was not called");
        return NULL;
    }
    if (count > 0 && self->fill + count > self->capacity && kernel_make_room(self, count) < 0) {
        return NULL;
    }
    return self->buf + self->fill;
}

/* Takes the `count` samples written at kernel_reserve's slot; returns, as PCM16LE, every output
 * they release. */
static PyObject *
kernel_release(Kernel *self, Py_ssize_t count)
{
    self->fill += count;
    self->samples_in += count;
    long long target = self->samples_in / self->down * self->up;
    Py_ssize_t ready = (Py_ssize_t)(target - self->samples_out);
    PyObject *out = PyBytes_FromStringAndSize(NULL, 2 * ready);
    if (out == NULL) {
        return NULL;
    }
    self->run(self->phases, self->width, self->up, self->down, self->buf, self->first,
            self->samples_out, ready, (unsigned char *)PyBytes_AS_STRING(out));
    self->samples_out = target;
    return out;
}

static PyObject *
kernel_process(Kernel *self, PyObject *arg)
{
    Py_buffer in;
    if (PyObject_GetBuffer(arg, &in, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    const unsigned char *bytes = (const unsigned char *)in.buf;
    Py_ssize_t len = in.len;
    Py_ssize_t count = (len + self->has_odd) / 2;
    double *to = kernel_reserve(self, count);
    if (to == NULL) {
        PyBuffer_Release(&in);
        return NULL;
    }
    if (self->has_odd && len > 0) {
        unsigned char pair[2] = {self->odd, bytes[0]};
        *to++ = sample_at(pair);
        bytes++;
        len--;
        self->has_odd = 0;
    }
    Py_ssize_t whole = len / 2;
    for (Py_ssize_t j = 0; j < whole; j++) {
        to[j] = sample_at(bytes + 2 * j);
    }
    if (len & 1) {
        self->has_odd = 1;
        self->odd = bytes[len - 1];
    }
    PyBuffer_Release(&in);
    return kernel_release(self, count);
}

/* process_coded(table, threshold, codes) -> (pcm, loud): each byte of `codes` decoded through
 * `table` (256 PCM16LE samples: a G.711 law), resampled as process() would resample the decoded
 * bytes, and whether the output's RMS reaches `threshold` (audioop.rms's figure: the square root
 * of the mean square, truncated). One call for what the uplink did in four (decode, resample,
 * measure; gateway/audio/transcode.py Uplink.feed_measured). `codes` comes last so that a
 * functools.partial can hold the rest: the per-frame call then has no Python frame at all. */
static PyObject *
kernel_process_coded(Kernel *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "process_coded(table, threshold, codes) takes 3 arguments");
        return NULL;
    }
    long threshold = PyLong_AsLong(args[1]);
    if (threshold == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer in, table;
    if (PyObject_GetBuffer(args[2], &in, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &table, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&in);
        return NULL;
    }
    PyObject *out = NULL;
    if (table.len != 512) {
        PyErr_SetString(PyExc_ValueError, "table must hold 256 PCM16LE samples");
        goto done;
    }
    if (self->has_odd) {
        PyErr_SetString(PyExc_ValueError, "a dangling odd byte: coded input is whole samples");
        goto done;
    }
    Py_ssize_t count = in.len;
    double *to = kernel_reserve(self, count);
    if (to == NULL) {
        goto done;
    }
    const unsigned char *codes = (const unsigned char *)in.buf;
    const unsigned char *samples = (const unsigned char *)table.buf;
    for (Py_ssize_t j = 0; j < count; j++) {
        to[j] = sample_at(samples + 2 * codes[j]);
    }
    PyObject *pcm = kernel_release(self, count);
    if (pcm == NULL) {
        goto done;
    }
    Py_ssize_t ready = PyBytes_GET_SIZE(pcm) / 2;
    const unsigned char *o = (const unsigned char *)PyBytes_AS_STRING(pcm);
    /* audioop.rms: sum of squares in a double (exact here: < 2**53), mean, sqrt, truncated. */
    double squares = 0.0;
    for (Py_ssize_t j = 0; j < ready; j++) {
        double v = sample_at(o + 2 * j);
        squares += v * v;
    }
    unsigned int rms = ready ? (unsigned int)sqrt(squares / (double)ready) : 0;
    out = Py_BuildValue("(NO)", pcm, (ready && (long)rms >= threshold) ? Py_True : Py_False);
done:
    PyBuffer_Release(&in);
    PyBuffer_Release(&table);
    return out;
}

/* process_encoded(table, pcm) -> codes: process(pcm), each output sample then encoded through
 * `table` (16384 codes, indexed by the sample's top 14 bits: G.711 encodes no finer), with no
 * PCM between the two. One call for the downlink's resample and encode
 * (gateway/audio/transcode.py CodedDownlink); `pcm` last, for a functools.partial. */
static PyObject *
kernel_process_encoded(Kernel *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "process_encoded(table, pcm) takes 2 arguments");
        return NULL;
    }
    Py_buffer table;
    if (PyObject_GetBuffer(args[0], &table, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (table.len != 16384) {
        PyBuffer_Release(&table);
        PyErr_SetString(PyExc_ValueError, "table must hold 16384 codes");
        return NULL;
    }
    PyObject *pcm = kernel_process(self, args[1]);
    if (pcm == NULL) {
        PyBuffer_Release(&table);
        return NULL;
    }
    Py_ssize_t count = PyBytes_GET_SIZE(pcm) / 2;
    PyObject *codes = PyBytes_FromStringAndSize(NULL, count);
    if (codes != NULL) {
        const unsigned char *from = (const unsigned char *)PyBytes_AS_STRING(pcm);
        const unsigned char *to_code = (const unsigned char *)table.buf;
        unsigned char *o = (unsigned char *)PyBytes_AS_STRING(codes);
        for (Py_ssize_t j = 0; j < count; j++) {
            unsigned int sample = (unsigned int)from[2 * j] | ((unsigned int)from[2 * j + 1] << 8);
            o[j] = to_code[sample >> 2];
        }
    }
    Py_DECREF(pcm);
    PyBuffer_Release(&table);
    return codes;
}

static PyObject *
kernel_reset(Kernel *self, PyObject *Py_UNUSED(ignored))
{
    if (self->phases != NULL) {
        kernel_start(self);
    }
    Py_RETURN_NONE;
}

static PyObject *
kernel_drop_odd(Kernel *self, PyObject *Py_UNUSED(ignored))
{
    self->has_odd = 0;
    Py_RETURN_NONE;
}

static PyObject *
kernel_get_samples_in(Kernel *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLongLong(self->samples_in);
}

static PyObject *
kernel_get_samples_out(Kernel *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLongLong(self->samples_out);
}

static PyMethodDef kernel_methods[] = {
    {"process", (PyCFunction)kernel_process, METH_O,
     "Resample a chunk of PCM16LE (any length; an odd byte waits); returns PCM16LE."},
    {"process_coded", (PyCFunction)(void (*)(void))kernel_process_coded, METH_FASTCALL,
     "Decode 8-bit codes through a 256-sample table, resample, and say whether the output's "
     "RMS reaches a threshold: (pcm, loud)."},
    {"process_encoded", (PyCFunction)(void (*)(void))kernel_process_encoded, METH_FASTCALL,
     "Resample a chunk of PCM16LE and encode each output sample through a 16384-code table "
     "(indexed by its top 14 bits): the codes."},
    {"reset", (PyCFunction)kernel_reset, METH_NOARGS,
     "Forget all input: the next process() behaves like a fresh kernel's."},
    {"drop_odd", (PyCFunction)kernel_drop_odd, METH_NOARGS,
     "Drop a dangling odd byte (a stream's end: half a sample is no sample)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef kernel_getset[] = {
    {"samples_in", (getter)kernel_get_samples_in, NULL, "Whole input samples taken.", NULL},
    {"samples_out", (getter)kernel_get_samples_out, NULL, "Output samples returned.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject KernelType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway.audio._polyphase.Kernel",
    .tp_doc = "Kernel(taps, up, down): streaming polyphase FIR over PCM16LE.",
    .tp_basicsize = sizeof(Kernel),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)kernel_init,
    .tp_dealloc = (destructor)kernel_dealloc,
    .tp_methods = kernel_methods,
    .tp_getset = kernel_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "gateway.audio._polyphase",
    .m_doc = "The streaming polyphase FIR of gateway.audio.resample, compiled.",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__polyphase(void)
{
    if (PyType_Ready(&KernelType) < 0) {
        return NULL;
    }
#ifdef HAVE_AVX2_BUILD
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        fir_run_best = fir_run_4;
    }
#endif
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    const char *lanes = fir_run_best == fir_run_2 ? "2 doubles" : "4 doubles (AVX2)";
    if (PyModule_AddStringConstant(m, "VECTOR", lanes) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&KernelType);
    if (PyModule_AddObject(m, "Kernel", (PyObject *)&KernelType) < 0) {
        Py_DECREF(&KernelType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
