/*
 * A call's per-frame byte work, one C call per step instead of many Python-level ones:
 * gateway/mediaplane.py holds the same functions in Python, answer for answer
 * (tests/test_mediaplane.py compares them on arbitrary input), and says why.
 *
 *   data_frame(data, at, limit, masked) -> (opcode, payload, end) | end | None
 *       The whole text or binary frame at data[at], unmasked; its end when the read cuts it
 *       off; None for a frame of another shape (websockets' parser then reads it).
 *
 *   carrier_media(raw, stream_key, stream_id) -> bytes | None
 *       The decoded audio of a carrier's media message of that stream, read straight from its
 *       bytes, when the message is in the narrow shape the carriers send; None for anything
 *       else (the full parse then decides, as before).
 *
 *   base64_frame(first, prefix, data, suffix, mask, urlsafe) -> bytes
 *       A whole websocket frame (RFC 6455 5.2) with first byte `first`, carrying
 *       prefix + base64(data) + suffix, masked with the 4-byte `mask` (or unmasked: b"";
 *       or None: masked with a fresh key from os.urandom, drawn 4096 bytes at a time).
 *
 *   model_audio(raw) -> bytes | None
 *       The audio of a Gemini Live message in the plain form of the fast path's audio shape;
 *       None for anything else (gateway/live/fast_path.py then reads it).
 *
 * Optional at install, like gateway/audio/_polyphase.c: without a C compiler the package
 * installs without it and gateway/mediaplane.py uses its Python forms.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include "structmember.h"

/* out[j] = in[j] ^ key[j % 4] for j < length (RFC 6455 5.3); `out` may be `in`. */
static void apply_mask(unsigned char *out, const unsigned char *in, Py_ssize_t length,
                       const unsigned char *key)
{
    uint32_t key32;
    memcpy(&key32, key, 4);
    uint64_t key64 = ((uint64_t)key32 << 32) | key32;
    Py_ssize_t j = 0;
    for (; j + 8 <= length; j += 8) {
        uint64_t w;
        memcpy(&w, in + j, 8);
        w ^= key64; /* the key repeats every 4 bytes, and j is a multiple of 8 */
        memcpy(out + j, &w, 8);
    }
    for (; j < length; j++) {
        out[j] = in[j] ^ key[j & 3];
    }
}

/* ------------------------------------------------------------------ carrier_media */

/* A span of the message: the bytes between a string's quotes. */
typedef struct {
    const unsigned char *at;
    Py_ssize_t len;
} span;

typedef struct {
    const unsigned char *p, *end;
} cursor;

static int is_ws(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

static void skip_ws(cursor *c)
{
    while (c->p < c->end && is_ws(*c->p)) {
        c->p++;
    }
}

/* Whether any of the 8 bytes of `w` ends a plain string's run: a quote, a backslash, a control
 * character or a byte outside printable ASCII (0x7f and up). Word-at-a-time: a model's audio
 * string is thousands of base64 characters, and this reads them eight per step. */
#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL
static inline int stops_plain_run(uint64_t w)
{
    uint64_t quote = w ^ (ONES * '"');
    uint64_t backslash = w ^ (ONES * '\\');
    uint64_t zero_quote = (quote - ONES) & ~quote;         /* high bit set where a byte was 0 */
    uint64_t zero_backslash = (backslash - ONES) & ~backslash;
    uint64_t control = (w - ONES * 0x20) & ~w;             /* bytes below 0x20 (and see below) */
    uint64_t high = w + ONES * 0x01;                       /* 0x7f becomes 0x80 */
    /* A byte >= 0x80 sets its own high bit in w; 0x7f sets it in `high` (no carry out of a
     * byte below 0x80 reaches the next); `control` can also flag bytes after a borrow, but only
     * when some byte was below 0x20, which stops the run anyway. */
    return ((zero_quote | zero_backslash | control | w | high) & HIGHS) != 0;
}

/* A JSON string with no escape and nothing outside printable ASCII: anything else declines
 * (returns 0), and the full parse reads it. */
static int read_plain_string(cursor *c, span *out)
{
    if (c->p >= c->end || *c->p != '"') {
        return 0;
    }
    const unsigned char *start = ++c->p;
    while (c->end - c->p >= 8) {
        uint64_t w;
        memcpy(&w, c->p, 8);
        if (stops_plain_run(w)) {
            break; /* the byte loop below finds which, and judges it */
        }
        c->p += 8;
    }
    while (c->p < c->end) {
        unsigned char ch = *c->p;
        if (ch == '"') {
            out->at = start;
            out->len = c->p - start;
            c->p++;
            return 1;
        }
        if (ch == '\\' || ch < 0x20 || ch >= 0x7f) {
            return 0;
        }
        c->p++;
    }
    return 0;
}

static int span_is(span s, const char *text, Py_ssize_t len)
{
    return s.len == len && memcmp(s.at, text, (size_t)len) == 0;
}

#define SPAN_IS(s, literal) span_is((s), (literal), (Py_ssize_t)(sizeof(literal) - 1))

/* Reads `"key"` `:` and leaves the cursor on the value; 0 if not a plain key. */
static int read_key(cursor *c, span *key)
{
    skip_ws(c);
    if (!read_plain_string(c, key)) {
        return 0;
    }
    skip_ws(c);
    if (c->p >= c->end || *c->p != ':') {
        return 0;
    }
    c->p++;
    skip_ws(c);
    return 1;
}

/* After a member's value: 1 at ',' (another member follows), 2 at '}' (the object ended),
 * 0 for anything else. */
static int next_member(cursor *c, unsigned char close)
{
    skip_ws(c);
    if (c->p >= c->end) {
        return 0;
    }
    if (*c->p == ',') {
        c->p++;
        return 1;
    }
    if (*c->p == close) {
        c->p++;
        return 2;
    }
    return 0;
}

static int expect(cursor *c, unsigned char ch)
{
    skip_ws(c);
    if (c->p >= c->end || *c->p != ch) {
        return 0;
    }
    c->p++;
    return 1;
}

/* The members of the `media` object: strings only. `track` and `payload` are read (each at
 * most once: a repeated one declines, so "the last one wins" never has to be decided here). */
static int read_media_object(cursor *c, span *track, int *has_track, span *payload,
                             int *has_payload)
{
    c->p++; /* the '{' */
    skip_ws(c);
    if (c->p < c->end && *c->p == '}') {
        c->p++;
        return 1;
    }
    for (;;) {
        span key, value;
        if (!read_key(c, &key) || !read_plain_string(c, &value)) {
            return 0;
        }
        if (SPAN_IS(key, "track")) {
            if (*has_track) {
                return 0;
            }
            *has_track = 1;
            *track = value;
        }
        else if (SPAN_IS(key, "payload")) {
            if (*has_payload) {
                return 0;
            }
            *has_payload = 1;
            *payload = value;
        }
        int next = next_member(c, '}');
        if (next != 1) {
            return next == 2;
        }
    }
}

/* Each character's value in the standard alphabet, -1 outside it (filled in at import). */
static signed char b64_value[256];

/* Strict standard base64 (RFC 4648 4): whole quads, '=' only as the last one or two
 * characters, no bits set past the data. Anything else declines (0); the full parse's decoder
 * then decides (it refuses or, for the last rule, reads what it reads). */
static PyObject *decode_strict_base64(span s, int *declined)
{
    *declined = 1;
    if (s.len % 4 != 0) {
        return NULL;
    }
    Py_ssize_t pad = 0;
    if (s.len >= 1 && s.at[s.len - 1] == '=') {
        pad = (s.len >= 2 && s.at[s.len - 2] == '=') ? 2 : 1;
    }
    Py_ssize_t out_len = s.len / 4 * 3 - pad;
    PyObject *out = PyBytes_FromStringAndSize(NULL, out_len);
    if (out == NULL) {
        *declined = 0;
        return NULL;
    }
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out);
    const unsigned char *in = s.at;
    Py_ssize_t quads = s.len / 4;
    for (Py_ssize_t q = 0; q < quads; q++, in += 4) {
        int last = q == quads - 1;
        int a = b64_value[in[0]], b = b64_value[in[1]];
        int cc = (last && pad == 2) ? 0 : b64_value[in[2]];
        int d = (last && pad >= 1) ? 0 : b64_value[in[3]];
        if (a < 0 || b < 0 || cc < 0 || d < 0) {
            Py_DECREF(out);
            return NULL;
        }
        uint32_t v = ((uint32_t)a << 18) | ((uint32_t)b << 12) | ((uint32_t)cc << 6) | (uint32_t)d;
        if (last && pad) {
            if (pad == 2) {
                if (v & 0xFFFF) {
                    Py_DECREF(out);
                    return NULL;
                }
                *o++ = (unsigned char)(v >> 16);
            }
            else {
                if (v & 0xFF) {
                    Py_DECREF(out);
                    return NULL;
                }
                *o++ = (unsigned char)(v >> 16);
                *o++ = (unsigned char)(v >> 8);
            }
        }
        else {
            *o++ = (unsigned char)(v >> 16);
            *o++ = (unsigned char)(v >> 8);
            *o++ = (unsigned char)v;
        }
    }
    *declined = 0;
    return out;
}

static PyObject *read_carrier_media(PyObject *raw, span stream_key, span stream_id);

static PyObject *carrier_media(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3 || !PyBytes_Check(args[0]) || !PyBytes_Check(args[1]) ||
        !PyBytes_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "carrier_media(raw: bytes, stream_key: bytes, "
                                         "stream_id: bytes)");
        return NULL;
    }
    span stream_key = {(const unsigned char *)PyBytes_AS_STRING(args[1]),
                       PyBytes_GET_SIZE(args[1])};
    span stream_id = {(const unsigned char *)PyBytes_AS_STRING(args[2]),
                      PyBytes_GET_SIZE(args[2])};
    return read_carrier_media(args[0], stream_key, stream_id);
}

/* carrier_media's reading of `raw` (bytes): the audio, None, or NULL with an exception set. */
static PyObject *read_carrier_media(PyObject *raw, span stream_key, span stream_id)
{
    cursor c = {(const unsigned char *)PyBytes_AS_STRING(raw), NULL};
    c.end = c.p + PyBytes_GET_SIZE(raw);

    int has_event = 0, has_stream = 0, has_media = 0, has_track = 0, has_payload = 0;
    span event = {0}, stream = {0}, track = {0}, payload = {0};

    skip_ws(&c);
    if (c.p >= c.end || *c.p != '{') {
        Py_RETURN_NONE;
    }
    c.p++;
    skip_ws(&c);
    if (c.p < c.end && *c.p == '}') {
        Py_RETURN_NONE; /* {}: not a media message */
    }
    for (;;) {
        span key;
        if (!read_key(&c, &key)) {
            Py_RETURN_NONE;
        }
        if (c.p < c.end && *c.p == '{') {
            if (!SPAN_IS(key, "media") || has_media) {
                Py_RETURN_NONE; /* only `media` may hold an object, once */
            }
            has_media = 1;
            if (!read_media_object(&c, &track, &has_track, &payload, &has_payload)) {
                Py_RETURN_NONE;
            }
        }
        else {
            span value;
            if (!read_plain_string(&c, &value)) {
                Py_RETURN_NONE;
            }
            if (SPAN_IS(key, "event")) {
                if (has_event) {
                    Py_RETURN_NONE;
                }
                has_event = 1;
                event = value;
            }
            else if (key.len == stream_key.len && memcmp(key.at, stream_key.at,
                                                         (size_t)key.len) == 0) {
                if (has_stream) {
                    Py_RETURN_NONE;
                }
                has_stream = 1;
                stream = value;
            }
            else if (SPAN_IS(key, "media")) {
                Py_RETURN_NONE; /* a media that is a string: the parse refuses it */
            }
        }
        int next = next_member(&c, '}');
        if (next == 0) {
            Py_RETURN_NONE;
        }
        if (next == 2) {
            break;
        }
    }
    skip_ws(&c);
    if (c.p != c.end || !has_event || !SPAN_IS(event, "media") || !has_media || !has_payload) {
        Py_RETURN_NONE;
    }
    if (has_stream && !(stream.len == stream_id.len &&
                        memcmp(stream.at, stream_id.at, (size_t)stream.len) == 0)) {
        Py_RETURN_NONE;
    }
    if (has_track && !SPAN_IS(track, "inbound")) {
        Py_RETURN_NONE;
    }
    int declined;
    PyObject *audio = decode_strict_base64(payload, &declined);
    if (audio == NULL && declined) {
        Py_RETURN_NONE;
    }
    return audio; /* NULL with an exception set: out of memory */
}

/* ------------------------------------------------------------------ model_audio */

/* Whether `mime`, its spaces taken out, is "audio/pcm;rate=24000". */
static int is_model_mime(span mime)
{
    static const char want[] = "audio/pcm;rate=24000";
    Py_ssize_t j = 0;
    for (Py_ssize_t i = 0; i < mime.len; i++) {
        if (mime.at[i] == ' ') {
            continue;
        }
        if (j >= (Py_ssize_t)(sizeof want - 1) || mime.at[i] != (unsigned char)want[j]) {
            return 0;
        }
        j++;
    }
    return j == (Py_ssize_t)(sizeof want - 1);
}

#define MAX_PARTS 64

/* One part: {"inlineData": {"mimeType": "...", "data": "..."}} (members in either order). */
static int read_part(cursor *c, span *data)
{
    span key, mime = {0};
    int has_mime = 0, has_data = 0;
    if (!expect(c, '{') || !read_key(c, &key) || !SPAN_IS(key, "inlineData") || !expect(c, '{')) {
        return 0;
    }
    for (;;) {
        span value;
        if (!read_key(c, &key) || !read_plain_string(c, &value)) {
            return 0;
        }
        if (SPAN_IS(key, "mimeType") && !has_mime) {
            has_mime = 1;
            mime = value;
        }
        else if (SPAN_IS(key, "data") && !has_data) {
            has_data = 1;
            *data = value;
        }
        else {
            return 0; /* another member, or a repeated one */
        }
        int next = next_member(c, '}');
        if (next == 0) {
            return 0;
        }
        if (next == 2) {
            break;
        }
    }
    if (!has_mime || !has_data || data->len == 0 || !is_model_mime(mime)) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < data->len; i++) {
        if (data->at[i] == '-' || data->at[i] == '_') {
            return 0; /* the URL-safe alphabet: the Python form reads it */
        }
    }
    return expect(c, '}'); /* the part holds inlineData only */
}

static PyObject *model_audio(PyObject *self, PyObject *arg)
{
    (void)self;
    if (!PyBytes_Check(arg)) {
        Py_RETURN_NONE;
    }
    cursor c = {(const unsigned char *)PyBytes_AS_STRING(arg), NULL};
    c.end = c.p + PyBytes_GET_SIZE(arg);
    span key, role, parts[MAX_PARTS];
    Py_ssize_t n_parts = 0;
    int has_parts = 0, has_role = 0;
    if (!expect(&c, '{') || !read_key(&c, &key) || !SPAN_IS(key, "serverContent") ||
        !expect(&c, '{') || !read_key(&c, &key) || !SPAN_IS(key, "modelTurn") ||
        !expect(&c, '{')) {
        Py_RETURN_NONE;
    }
    for (;;) {
        if (!read_key(&c, &key)) {
            Py_RETURN_NONE;
        }
        if (SPAN_IS(key, "role") && !has_role) {
            has_role = 1;
            if (!read_plain_string(&c, &role)) {
                Py_RETURN_NONE;
            }
        }
        else if (SPAN_IS(key, "parts") && !has_parts) {
            has_parts = 1;
            if (!expect(&c, '[')) {
                Py_RETURN_NONE;
            }
            for (;;) {
                if (n_parts == MAX_PARTS || !read_part(&c, &parts[n_parts])) {
                    Py_RETURN_NONE;
                }
                n_parts++;
                int next = next_member(&c, ']');
                if (next == 0) {
                    Py_RETURN_NONE;
                }
                if (next == 2) {
                    break;
                }
            }
        }
        else {
            Py_RETURN_NONE;
        }
        int next = next_member(&c, '}');
        if (next == 0) {
            Py_RETURN_NONE;
        }
        if (next == 2) {
            break;
        }
    }
    if (!has_parts || !expect(&c, '}') || !expect(&c, '}')) {
        Py_RETURN_NONE;
    }
    skip_ws(&c);
    if (c.p != c.end) {
        Py_RETURN_NONE;
    }
    if (n_parts == 1) {
        int declined;
        PyObject *audio = decode_strict_base64(parts[0], &declined);
        if (audio == NULL && declined) {
            Py_RETURN_NONE;
        }
        return audio;
    }
    PyObject *chunks[MAX_PARTS];
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < n_parts; i++) {
        int declined;
        chunks[i] = decode_strict_base64(parts[i], &declined);
        if (chunks[i] == NULL) {
            for (Py_ssize_t j = 0; j < i; j++) {
                Py_DECREF(chunks[j]);
            }
            if (declined) {
                Py_RETURN_NONE;
            }
            return NULL;
        }
        total += PyBytes_GET_SIZE(chunks[i]);
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out != NULL) {
        char *o = PyBytes_AS_STRING(out);
        for (Py_ssize_t i = 0; i < n_parts; i++) {
            memcpy(o, PyBytes_AS_STRING(chunks[i]), (size_t)PyBytes_GET_SIZE(chunks[i]));
            o += PyBytes_GET_SIZE(chunks[i]);
        }
    }
    for (Py_ssize_t i = 0; i < n_parts; i++) {
        Py_DECREF(chunks[i]);
    }
    return out;
}

/* ------------------------------------------------------------------ data_frame */

enum { CUT_OTHER = 0, CUT_SHORT = 1, CUT_WHOLE = 2 };

/* The frame at d[at] (RFC 6455 5.2), if it is a whole (FIN) text or binary frame whose mask
 * bit is `masked`, with a payload of at most `limit` bytes (no limit when negative):
 * CUT_WHOLE with its payload's start and end, CUT_SHORT with the end it would have (past
 * `size`: cut off by the end of the read), CUT_OTHER for a frame of another shape. */
static int cut_frame(const unsigned char *d, Py_ssize_t size, Py_ssize_t at, Py_ssize_t limit,
                     int masked, Py_ssize_t *start, Py_ssize_t *end)
{
    if (d[at] != 0x81 && d[at] != 0x82) {
        return CUT_OTHER;
    }
    if (size - at < 2) {
        *end = at + 2;
        return CUT_SHORT;
    }
    unsigned char second = d[at + 1];
    if (((second & 0x80) != 0) != (masked != 0)) {
        return CUT_OTHER;
    }
    unsigned long long length = second & 0x7F;
    Py_ssize_t header = 2;
    if (length == 126) {
        header = 4;
        if (size - at < header) {
            *end = at + header;
            return CUT_SHORT;
        }
        length = ((unsigned long long)d[at + 2] << 8) | d[at + 3];
    }
    else if (length == 127) {
        header = 10;
        if (size - at < header) {
            *end = at + header;
            return CUT_SHORT;
        }
        length = 0;
        for (int i = 0; i < 8; i++) {
            length = (length << 8) | d[at + 2 + i];
        }
    }
    if (limit >= 0 && length > (unsigned long long)limit) {
        return CUT_OTHER;
    }
    *start = at + header + (masked ? 4 : 0);
    if (length > (unsigned long long)(PY_SSIZE_T_MAX - *start)) {
        return CUT_OTHER; /* past any buffer: websockets refuses it */
    }
    *end = *start + (Py_ssize_t)length;
    return *end > size ? CUT_SHORT : CUT_WHOLE;
}

/* The payload d[start:end], unmasked with the four bytes before it when `masked`. */
static PyObject *frame_payload(const unsigned char *d, Py_ssize_t start, Py_ssize_t end,
                               int masked)
{
    Py_ssize_t length = end - start;
    if (!masked) {
        return PyBytes_FromStringAndSize((const char *)d + start, length);
    }
    PyObject *payload = PyBytes_FromStringAndSize(NULL, length);
    if (payload == NULL) {
        return NULL;
    }
    apply_mask((unsigned char *)PyBytes_AS_STRING(payload), d + start, length, d + start - 4);
    return payload;
}

static PyObject *data_frame(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 4 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError,
                        "data_frame(data: bytes, at: int, limit: int, masked: bool)");
        return NULL;
    }
    Py_ssize_t at = PyLong_AsSsize_t(args[1]);
    if (at == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t limit = PyLong_AsSsize_t(args[2]);
    if (limit == -1 && PyErr_Occurred()) {
        return NULL;
    }
    int masked = PyObject_IsTrue(args[3]);
    if (masked < 0) {
        return NULL;
    }
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]), start = 0, end = 0;
    if (at < 0 || at >= size) {
        PyErr_SetString(PyExc_ValueError, "at must be within data");
        return NULL;
    }
    int cut = cut_frame(d, size, at, limit, masked, &start, &end);
    if (cut == CUT_OTHER) {
        Py_RETURN_NONE;
    }
    if (cut == CUT_SHORT) {
        return PyLong_FromSsize_t(end);
    }
    PyObject *payload = frame_payload(d, start, end, masked);
    if (payload == NULL) {
        return NULL;
    }
    return Py_BuildValue("(iNn)", d[at] & 0x0F, payload, end);
}

/* ------------------------------------------------------------------ base64_frame */

static const char B64_ALPHABET[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char B64_URLSAFE[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* Masking keys: os.urandom's bytes, 1024 keys at a time, each used once (RFC 6455 5.3 asks for
 * a fresh key per frame from a strong source of entropy; a system call per frame cost more than
 * the rest of the frame). The pool lives under the GIL, like every call into this module. */
#define KEY_POOL_BYTES 4096
static unsigned char key_pool[KEY_POOL_BYTES];
static Py_ssize_t key_at = KEY_POOL_BYTES;
static PyObject *urandom; /* os.urandom */

static int fresh_key(unsigned char key[4])
{
    if (key_at + 4 > KEY_POOL_BYTES) {
        PyObject *drawn = PyObject_CallFunction(urandom, "n", (Py_ssize_t)KEY_POOL_BYTES);
        if (drawn == NULL) {
            return -1;
        }
        if (!PyBytes_Check(drawn) || PyBytes_GET_SIZE(drawn) != KEY_POOL_BYTES) {
            Py_DECREF(drawn);
            PyErr_SetString(PyExc_RuntimeError, "os.urandom returned the wrong size");
            return -1;
        }
        memcpy(key_pool, PyBytes_AS_STRING(drawn), KEY_POOL_BYTES);
        Py_DECREF(drawn);
        key_at = 0;
    }
    memcpy(key, key_pool + key_at, 4);
    memset(key_pool + key_at, 0, 4); /* used: nothing left to read it from */
    key_at += 4;
    return 0;
}

/* The frame base64_frame makes, from plain buffers: a new bytes object, or NULL (no memory). */
static PyObject *frame_of(unsigned char first, const void *prefix_at, Py_ssize_t prefix_len,
                          const void *data_at, Py_ssize_t data_len, const void *suffix_at,
                          Py_ssize_t suffix_len, const void *mask_at, Py_ssize_t mask_len,
                          int urlsafe)
{
    Py_ssize_t encoded = (data_len + 2) / 3 * 4;
    Py_ssize_t length = prefix_len + encoded + suffix_len;
    Py_ssize_t header = length < 126 ? 2 : (length < 65536 ? 4 : 10);
    PyObject *out = PyBytes_FromStringAndSize(NULL, header + mask_len + length);
    if (out == NULL) {
        return NULL;
    }
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out);
    unsigned char bit = mask_len ? 0x80 : 0;
    o[0] = first;
    if (length < 126) {
        o[1] = bit | (unsigned char)length;
    }
    else if (length < 65536) {
        o[1] = bit | 126;
        o[2] = (unsigned char)(length >> 8);
        o[3] = (unsigned char)length;
    }
    else {
        o[1] = bit | 127;
        for (int i = 0; i < 8; i++) {
            o[2 + i] = (unsigned char)((unsigned long long)length >> (56 - 8 * i));
        }
    }
    o += header;
    memcpy(o, mask_at, (size_t)mask_len);
    o += mask_len;
    unsigned char *body = o;
    memcpy(o, prefix_at, (size_t)prefix_len);
    o += prefix_len;
    const char *alphabet = urlsafe ? B64_URLSAFE : B64_ALPHABET;
    const unsigned char *in = data_at;
    Py_ssize_t i = 0;
    for (; i + 3 <= data_len; i += 3) {
        uint32_t v = ((uint32_t)in[i] << 16) | ((uint32_t)in[i + 1] << 8) | in[i + 2];
        o[0] = (unsigned char)alphabet[v >> 18];
        o[1] = (unsigned char)alphabet[(v >> 12) & 63];
        o[2] = (unsigned char)alphabet[(v >> 6) & 63];
        o[3] = (unsigned char)alphabet[v & 63];
        o += 4;
    }
    if (data_len - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        o[0] = (unsigned char)alphabet[v >> 18];
        o[1] = (unsigned char)alphabet[(v >> 12) & 63];
        o[2] = '=';
        o[3] = '=';
        o += 4;
    }
    else if (data_len - i == 2) {
        uint32_t v = ((uint32_t)in[i] << 16) | ((uint32_t)in[i + 1] << 8);
        o[0] = (unsigned char)alphabet[v >> 18];
        o[1] = (unsigned char)alphabet[(v >> 12) & 63];
        o[2] = (unsigned char)alphabet[(v >> 6) & 63];
        o[3] = '=';
        o += 4;
    }
    memcpy(o, suffix_at, (size_t)suffix_len);
    if (mask_len) {
        apply_mask(body, body, length, mask_at);
    }
    return out;
}

static PyObject *base64_frame(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "base64_frame(first, prefix, data, suffix, mask, "
                                         "urlsafe) takes 6 arguments");
        return NULL;
    }
    long first = PyLong_AsLong(args[0]);
    if (first == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (first < 0 || first > 255) {
        PyErr_SetString(PyExc_ValueError, "first must be a byte");
        return NULL;
    }
    Py_buffer prefix, data, suffix, mask;
    if (PyObject_GetBuffer(args[1], &prefix, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[2], &data, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&prefix);
        return NULL;
    }
    if (PyObject_GetBuffer(args[3], &suffix, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&prefix);
        PyBuffer_Release(&data);
        return NULL;
    }
    unsigned char drawn[4];
    if (args[4] == Py_None) {
        if (fresh_key(drawn) < 0) {
            PyBuffer_Release(&prefix);
            PyBuffer_Release(&data);
            PyBuffer_Release(&suffix);
            return NULL;
        }
        /* A read-only view of the drawn key, released below like any other. */
        if (PyBuffer_FillInfo(&mask, NULL, drawn, 4, 1, PyBUF_SIMPLE) < 0) {
            PyBuffer_Release(&prefix);
            PyBuffer_Release(&data);
            PyBuffer_Release(&suffix);
            return NULL;
        }
    }
    else if (PyObject_GetBuffer(args[4], &mask, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&prefix);
        PyBuffer_Release(&data);
        PyBuffer_Release(&suffix);
        return NULL;
    }
    int urlsafe = PyObject_IsTrue(args[5]);
    PyObject *out = NULL;
    if (urlsafe < 0) {
        goto done;
    }
    if (mask.len != 0 && mask.len != 4) {
        PyErr_SetString(PyExc_ValueError, "mask must be 4 bytes, empty for none, or None");
        goto done;
    }
    out = frame_of((unsigned char)first, prefix.buf, prefix.len, data.buf, data.len, suffix.buf,
                   suffix.len, mask.buf, mask.len, urlsafe);
done:
    PyBuffer_Release(&prefix);
    PyBuffer_Release(&data);
    PyBuffer_Release(&suffix);
    PyBuffer_Release(&mask);
    return out;
}

/* ------------------------------------------------------------------ CallerLane */

/* A call's caller frames, from the carrier's message to the model's frame, in one C call each:
 * the bridge's own path (gateway/call/lane.py says which, and why) done over this struct
 * instead of a dozen Python objects. It takes a frame only when the bridge's path would take
 * it the same way; anything else goes to `fallback` untouched. What it changed stays here
 * (pending) until `settle()` hands it to Python's owners through the sinks, after which the
 * lane asks `reload()` for their state again before its next frame. */

/* Pending frames handed to the journal at the latest after this many (a second). */
#define LANE_FLUSH_FRAMES 50
/* After reload() declined, frames left to the fallback before it is asked again. */
#define LANE_RETRY_FRAMES 25

typedef struct {
    PyObject_HEAD
    PyObject *fallback;    /* (raw) -> bool: the bridge's own path */
    PyObject *reload;      /* () -> None | (admitted_s, step, generation, next_index, target) */
    PyObject *bridge_sink; /* (frames, admitted_s, last_at, last_loud_at) -> None */
    PyObject *stream_key, *stream_id; /* bytes */
    Py_ssize_t max_message;
    double bytes_per_second, started_at, allowance_s;
    char waiting; /* the caller loop waits in receive(): a frame may be taken now */
    /* What reload() gave; valid while `ready`. */
    int ready;
    int retry_in;
    PyObject *step;   /* (payload) -> (pcm, voiced) */
    PyObject *target; /* (ws, protocol, transport, open_state, prefix, suffix, masked,
                         journal_sink, on_failed) */
    PyObject *ws, *protocol, *transport, *open_state, *prefix, *suffix, *journal_sink,
        *on_failed, *write, *is_closing;
    int masked;
    long long generation, next_index, first_index;
    double admitted_s;
    /* Pending since the last settle. */
    Py_ssize_t frames;
    double last_at, last_loud_at;
    PyObject *pcm;    /* list of bytes: the journal's frames */
    PyObject *voiced; /* list of bools */
} CallerLane;

static PyObject *str_paused, *str_send_in_progress, *str_state, *str_writes, *str_extensions,
    *str_expect_continuation_frame, *str_write, *str_is_closing, *str_abort;

static void lane_unbind(CallerLane *self)
{
    Py_CLEAR(self->target);
    Py_CLEAR(self->ws);
    Py_CLEAR(self->protocol);
    Py_CLEAR(self->transport);
    Py_CLEAR(self->open_state);
    Py_CLEAR(self->prefix);
    Py_CLEAR(self->suffix);
    Py_CLEAR(self->journal_sink);
    Py_CLEAR(self->on_failed);
    Py_CLEAR(self->write);
    Py_CLEAR(self->is_closing);
    Py_CLEAR(self->step);
    self->ready = 0;
}

static int lane_clear(CallerLane *self)
{
    lane_unbind(self);
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->reload);
    Py_CLEAR(self->bridge_sink);
    Py_CLEAR(self->stream_key);
    Py_CLEAR(self->stream_id);
    Py_CLEAR(self->pcm);
    Py_CLEAR(self->voiced);
    return 0;
}

static int lane_traverse(CallerLane *self, visitproc visit, void *arg)
{
    Py_VISIT(self->fallback);
    Py_VISIT(self->reload);
    Py_VISIT(self->bridge_sink);
    Py_VISIT(self->stream_key);
    Py_VISIT(self->stream_id);
    Py_VISIT(self->pcm);
    Py_VISIT(self->voiced);
    Py_VISIT(self->target);
    Py_VISIT(self->ws);
    Py_VISIT(self->protocol);
    Py_VISIT(self->transport);
    Py_VISIT(self->open_state);
    Py_VISIT(self->prefix);
    Py_VISIT(self->suffix);
    Py_VISIT(self->journal_sink);
    Py_VISIT(self->on_failed);
    Py_VISIT(self->write);
    Py_VISIT(self->is_closing);
    Py_VISIT(self->step);
    return 0;
}

static void lane_dealloc(CallerLane *self)
{
    PyObject_GC_UnTrack(self);
    lane_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int lane_init(CallerLane *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fallback", "reload", "bridge_sink", "stream_key", "stream_id",
                             "max_message", "bytes_per_second", "started_at", "allowance_s",
                             NULL};
    PyObject *fallback, *reload, *bridge_sink, *stream_key, *stream_id;
    Py_ssize_t max_message;
    double bytes_per_second, started_at, allowance_s;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOSSnddd:CallerLane", kwlist, &fallback,
                                     &reload, &bridge_sink, &stream_key, &stream_id,
                                     &max_message, &bytes_per_second, &started_at,
                                     &allowance_s)) {
        return -1;
    }
    if (bytes_per_second <= 0) {
        PyErr_SetString(PyExc_ValueError, "bytes_per_second must be positive");
        return -1;
    }
    lane_clear(self);
    self->fallback = Py_NewRef(fallback);
    self->reload = Py_NewRef(reload);
    self->bridge_sink = Py_NewRef(bridge_sink);
    self->stream_key = Py_NewRef(stream_key);
    self->stream_id = Py_NewRef(stream_id);
    self->max_message = max_message;
    self->bytes_per_second = bytes_per_second;
    self->started_at = started_at;
    self->allowance_s = allowance_s;
    self->pcm = PyList_New(0);
    self->voiced = PyList_New(0);
    if (self->pcm == NULL || self->voiced == NULL) {
        return -1;
    }
    self->frames = 0;
    self->last_loud_at = -1.0;
    self->retry_in = 0;
    return 0;
}

/* Hand everything pending to its owners; the lane reloads before its next frame. */
static int lane_settle_now(CallerLane *self)
{
    self->ready = 0;
    Py_ssize_t frames = self->frames;
    if (frames == 0) {
        return 0;
    }
    PyObject *fresh_pcm = PyList_New(0), *fresh_voiced = PyList_New(0);
    if (fresh_pcm == NULL || fresh_voiced == NULL) {
        Py_XDECREF(fresh_pcm);
        Py_XDECREF(fresh_voiced);
        return -1; /* nothing handed over: still pending */
    }
    /* Taken out first: a sink that comes back here finds nothing pending. */
    PyObject *pcm = self->pcm, *voiced = self->voiced;
    PyObject *journal_sink = Py_XNewRef(self->journal_sink);
    double admitted_s = self->admitted_s, last_at = self->last_at;
    double last_loud_at = self->last_loud_at;
    long long generation = self->generation, first_index = self->first_index;
    self->pcm = fresh_pcm;
    self->voiced = fresh_voiced;
    self->frames = 0;
    self->last_loud_at = -1.0;
    PyObject *r = PyObject_CallFunction(self->bridge_sink, "nddd", frames, admitted_s, last_at,
                                        last_loud_at);
    int failed = r == NULL;
    Py_XDECREF(r);
    if (!failed && journal_sink != NULL) {
        r = PyObject_CallFunction(journal_sink, "LLOOd", generation, first_index, pcm, voiced,
                                  last_loud_at);
        failed = r == NULL;
        Py_XDECREF(r);
    }
    Py_XDECREF(journal_sink);
    Py_DECREF(pcm);
    Py_DECREF(voiced);
    return failed ? -1 : 0;
}

/* 1: bound and ready; 0: reload() declined (or is not asked yet); -1: an error. */
static int lane_reload(CallerLane *self)
{
    if (self->retry_in > 0) {
        self->retry_in--;
        return 0;
    }
    PyObject *r = PyObject_CallNoArgs(self->reload);
    if (r == NULL) {
        return -1;
    }
    if (r == Py_None) {
        Py_DECREF(r);
        self->retry_in = LANE_RETRY_FRAMES;
        return 0;
    }
    double admitted_s;
    long long generation, next_index;
    PyObject *step, *target;
    if (!PyArg_ParseTuple(r, "dOLLO!:reload", &admitted_s, &step, &generation, &next_index,
                          &PyTuple_Type, &target)) {
        Py_DECREF(r);
        return -1;
    }
    if (target != self->target) {
        PyObject *ws, *protocol, *transport, *open_state, *prefix, *suffix, *journal_sink,
            *on_failed;
        int masked;
        if (!PyArg_ParseTuple(target, "OOOOSSpOO:target", &ws, &protocol, &transport,
                              &open_state, &prefix, &suffix, &masked, &journal_sink,
                              &on_failed)) {
            Py_DECREF(r);
            return -1;
        }
        PyObject *write = PyObject_GetAttr(transport, str_write);
        PyObject *is_closing = PyObject_GetAttr(transport, str_is_closing);
        if (write == NULL || is_closing == NULL) {
            Py_XDECREF(write);
            Py_XDECREF(is_closing);
            Py_DECREF(r);
            return -1;
        }
        lane_unbind(self);
        self->target = Py_NewRef(target);
        self->ws = Py_NewRef(ws);
        self->protocol = Py_NewRef(protocol);
        self->transport = Py_NewRef(transport);
        self->open_state = Py_NewRef(open_state);
        self->prefix = Py_NewRef(prefix);
        self->suffix = Py_NewRef(suffix);
        self->journal_sink = Py_NewRef(journal_sink);
        self->on_failed = Py_NewRef(on_failed);
        self->write = write;
        self->is_closing = is_closing;
        self->masked = masked;
    }
    Py_XSETREF(self->step, Py_NewRef(step));
    self->admitted_s = admitted_s;
    self->generation = generation;
    self->next_index = next_index;
    self->ready = 1;
    Py_DECREF(r);
    return 1;
}

/* Truth of attribute `name` of `obj`: 1, 0, or -1 with an exception set. */
static int attr_true(PyObject *obj, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL) {
        return -1;
    }
    int t = PyObject_IsTrue(v);
    Py_DECREF(v);
    return t;
}

/* Whether the model's socket takes a frame now, as DirectSender.writable() and
 * write_base64's own checks decide it: 1, 0, or -1 with an exception set. */
static int lane_writable(CallerLane *self)
{
    PyObject *state = PyObject_GetAttr(self->protocol, str_state);
    if (state == NULL) {
        return -1;
    }
    int open = state == self->open_state;
    Py_DECREF(state);
    if (!open) {
        return 0;
    }
    int t = attr_true(self->ws, str_paused);
    if (t != 0) {
        return t < 0 ? -1 : 0;
    }
    PyObject *sending = PyObject_GetAttr(self->ws, str_send_in_progress);
    if (sending == NULL) {
        return -1;
    }
    int idle = sending == Py_None;
    Py_DECREF(sending);
    if (!idle) {
        return 0;
    }
    PyObject *closing = PyObject_CallNoArgs(self->is_closing);
    if (closing == NULL) {
        return -1;
    }
    t = PyObject_IsTrue(closing);
    Py_DECREF(closing);
    if (t != 0) {
        return t < 0 ? -1 : 0;
    }
    PyObject *names[3] = {str_writes, str_extensions, str_expect_continuation_frame};
    for (int i = 0; i < 3; i++) {
        t = attr_true(self->protocol, names[i]);
        if (t != 0) {
            return t < 0 ? -1 : 0;
        }
    }
    return 1;
}

static double monotonic_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* time.monotonic()'s clock on Linux */
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static PyObject *lane_take(CallerLane *self, PyObject *raw)
{
    if (!self->waiting || self->fallback == NULL || !PyBytes_Check(raw) ||
        PyBytes_GET_SIZE(raw) > self->max_message) {
        goto decline;
    }
    if (!self->ready) {
        int ready = lane_reload(self);
        if (ready < 0) {
            return NULL;
        }
        if (!ready) {
            goto decline;
        }
    }
    int writable = lane_writable(self);
    if (writable < 0) {
        return NULL;
    }
    if (!writable) {
        goto decline;
    }
    span key = {(const unsigned char *)PyBytes_AS_STRING(self->stream_key),
                PyBytes_GET_SIZE(self->stream_key)};
    span id = {(const unsigned char *)PyBytes_AS_STRING(self->stream_id),
               PyBytes_GET_SIZE(self->stream_id)};
    PyObject *payload = read_carrier_media(raw, key, id);
    if (payload == NULL) {
        return NULL;
    }
    if (payload == Py_None) {
        Py_DECREF(payload);
        goto decline;
    }
    double now = monotonic_now();
    double seconds = (double)PyBytes_GET_SIZE(payload) / self->bytes_per_second;
    if (self->admitted_s + seconds > now - self->started_at + self->allowance_s) {
        Py_DECREF(payload); /* ahead of real time: the bridge drops it, and says so */
        goto decline;
    }
    PyObject *measured = PyObject_CallOneArg(self->step, payload);
    Py_DECREF(payload);
    if (measured == NULL) {
        return NULL;
    }
    if (!PyTuple_Check(measured) || PyTuple_GET_SIZE(measured) != 2 ||
        !PyBytes_Check(PyTuple_GET_ITEM(measured, 0))) {
        Py_DECREF(measured);
        PyErr_SetString(PyExc_TypeError, "the uplink's step must return (bytes, bool)");
        return NULL;
    }
    PyObject *pcm = PyTuple_GET_ITEM(measured, 0);
    int loud = PyObject_IsTrue(PyTuple_GET_ITEM(measured, 1));
    if (loud < 0) {
        Py_DECREF(measured);
        return NULL;
    }
    /* Taken: from here on the frame is the lane's. */
    self->admitted_s += seconds;
    self->last_at = now;
    if (loud) {
        self->last_loud_at = now;
    }
    if (self->frames == 0) {
        self->first_index = self->next_index;
    }
    self->next_index++;
    self->frames++;
    if (PyList_Append(self->pcm, pcm) < 0 ||
        PyList_Append(self->voiced, loud ? Py_True : Py_False) < 0) {
        Py_DECREF(measured);
        return NULL;
    }
    unsigned char key4[4];
    if (self->masked && fresh_key(key4) < 0) {
        Py_DECREF(measured);
        return NULL;
    }
    PyObject *frame = frame_of(0x81, PyBytes_AS_STRING(self->prefix),
                               PyBytes_GET_SIZE(self->prefix), PyBytes_AS_STRING(pcm),
                               PyBytes_GET_SIZE(pcm), PyBytes_AS_STRING(self->suffix),
                               PyBytes_GET_SIZE(self->suffix), key4, self->masked ? 4 : 0, 1);
    Py_DECREF(measured);
    if (frame == NULL) {
        return NULL;
    }
    PyObject *written = PyObject_CallOneArg(self->write, frame);
    Py_DECREF(frame);
    if (written == NULL) {
        /* DirectSender._write: the transport broke as it wrote; abort it, and the session
         * learns of it as it would (the frame journalled as unsent, the connection lost). */
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            return NULL;
        }
        PyErr_Clear();
        PyObject *on_failed = Py_NewRef(self->on_failed);
        PyObject *aborted = PyObject_CallMethodNoArgs(self->transport, str_abort);
        if (aborted == NULL || lane_settle_now(self) < 0) {
            Py_XDECREF(aborted);
            Py_DECREF(on_failed);
            return NULL;
        }
        Py_DECREF(aborted);
        PyObject *r = PyObject_CallNoArgs(on_failed);
        Py_DECREF(on_failed);
        if (r == NULL) {
            return NULL;
        }
        Py_DECREF(r);
        Py_RETURN_TRUE;
    }
    Py_DECREF(written);
    if (self->frames >= LANE_FLUSH_FRAMES && lane_settle_now(self) < 0) {
        return NULL;
    }
    Py_RETURN_TRUE;
decline:
    if (self->fallback == NULL) {
        Py_RETURN_FALSE;
    }
    return PyObject_CallOneArg(self->fallback, raw);
}

static PyObject *lane_settle(CallerLane *self, PyObject *Py_UNUSED(ignored))
{
    if (self->bridge_sink != NULL && lane_settle_now(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *lane_close(CallerLane *self, PyObject *Py_UNUSED(ignored))
{
    if (self->bridge_sink != NULL && lane_settle_now(self) < 0) {
        return NULL;
    }
    lane_clear(self);
    Py_RETURN_NONE;
}

static PyObject *lane_get_pending(CallerLane *self, void *closure)
{
    (void)closure;
    return PyLong_FromSsize_t(self->frames);
}

static PyObject *lane_get_ready(CallerLane *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->ready);
}

static PyMethodDef lane_methods[] = {
    {"take", (PyCFunction)lane_take, METH_O,
     "Take one caller message (bytes): True when taken here or by the fallback."},
    {"settle", (PyCFunction)lane_settle, METH_NOARGS,
     "Hand what is pending to the sinks; reload before the next frame."},
    {"close", (PyCFunction)lane_close, METH_NOARGS,
     "Settle, then let go of everything (the lane declines every frame after)."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef lane_members[] = {
    {"waiting", T_BOOL, offsetof(CallerLane, waiting), 0,
     "Whether the caller loop waits in receive() (a frame may be taken now)."},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef lane_getset[] = {
    {"pending", (getter)lane_get_pending, NULL, "Frames taken since the last settle.", NULL},
    {"ready", (getter)lane_get_ready, NULL, "Whether the lane is bound and reloaded.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject CallerLaneType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway._mediaplane.CallerLane",
    .tp_doc = "A call's caller frames in one C call each (gateway/call/lane.py).",
    .tp_basicsize = sizeof(CallerLane),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)lane_init,
    .tp_dealloc = (destructor)lane_dealloc,
    .tp_traverse = (traverseproc)lane_traverse,
    .tp_clear = (inquiry)lane_clear,
    .tp_methods = lane_methods,
    .tp_members = lane_members,
    .tp_getset = lane_getset,
};

/* ------------------------------------------------------------------ the module */

static PyMethodDef methods[] = {
    {"carrier_media", (PyCFunction)(void (*)(void))carrier_media, METH_FASTCALL,
     "The audio of a carrier media message of that stream in the narrow shape, else None."},
    {"model_audio", (PyCFunction)model_audio, METH_O,
     "The audio of a model message in Gemini Live's plain audio shape, else None."},
    {"data_frame", (PyCFunction)(void (*)(void))data_frame, METH_FASTCALL,
     "The opcode, payload (unmasked) and end of the whole text or binary frame at `at`; its "
     "end if cut off; None for a frame of another shape."},
    {"base64_frame", (PyCFunction)(void (*)(void))base64_frame, METH_FASTCALL,
     "A websocket frame carrying prefix + base64(data) + suffix, masked unless mask is b'' "
     "(None: with a fresh key from os.urandom)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "gateway._mediaplane",
    .m_doc = "The byte work of gateway.mediaplane, compiled.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__mediaplane(void)
{
    memset(b64_value, -1, sizeof b64_value);
    for (int i = 0; i < 64; i++) {
        b64_value[(unsigned char)B64_ALPHABET[i]] = (signed char)i;
    }
    PyObject *os = PyImport_ImportModule("os");
    if (os == NULL) {
        return NULL;
    }
    urandom = PyObject_GetAttrString(os, "urandom");
    Py_DECREF(os);
    if (urandom == NULL) {
        return NULL;
    }
    struct {
        PyObject **slot;
        const char *name;
    } names[] = {
        {&str_paused, "paused"}, {&str_send_in_progress, "send_in_progress"},
        {&str_state, "state"}, {&str_writes, "writes"}, {&str_extensions, "extensions"},
        {&str_expect_continuation_frame, "expect_continuation_frame"}, {&str_write, "write"},
        {&str_is_closing, "is_closing"}, {&str_abort, "abort"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        *names[i].slot = PyUnicode_InternFromString(names[i].name);
        if (*names[i].slot == NULL) {
            return NULL;
        }
    }
    if (PyType_Ready(&CallerLaneType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "CallerLane", (PyObject *)&CallerLaneType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
