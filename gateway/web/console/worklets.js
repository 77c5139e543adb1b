'use strict';
// AudioWorklet processors of the console's Talk view (loaded with audioWorklet.addModule).
//
// capture: microphone → Int16 frames of exactly 320 samples (20 ms at the 16 kHz context rate),
//          posted to the main thread as transferred ArrayBuffers.
// player:  a jitter buffer for the gateway's 24 kHz PCM: a Float32 ring, marks queued at the
//          sample position where they arrived and reported when the playhead passes them.
//
// The capture's Int16Array is in platform byte order: little-endian wherever browsers run,
// as the wire (PCM16LE) wants. The player reads with DataView, little-endian explicitly.

const CAPTURE_FRAME = 320;

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.frame = new Int16Array(CAPTURE_FRAME);
    this.fill = 0;
    this.stopped = false;
    this.port.onmessage = (event) => {
      if (event.data === 'stop') this.stopped = true;
    };
  }

  process(inputs) {
    if (this.stopped) return false;
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true; // no input connected yet
    for (let i = 0; i < channel.length; i++) {
      let s = channel[i];
      s = s < -1 ? -1 : s > 1 ? 1 : s; // clamp; NaN ends up as 0 in the Int16Array
      this.frame[this.fill++] = s < 0 ? s * 32768 : s * 32767;
      if (this.fill === CAPTURE_FRAME) {
        this.port.postMessage(this.frame.buffer, [this.frame.buffer]);
        this.frame = new Int16Array(CAPTURE_FRAME);
        this.fill = 0;
      }
    }
    return true;
  }
}

class PlayerProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.capacity = Math.ceil(sampleRate * (opts.seconds || 30));
    this.ring = new Float32Array(this.capacity);
    // Absolute sample counts since the start (not ring indexes): marks compare against them.
    this.readPos = 0;
    this.writePos = 0;
    this.marks = []; // [{id, pos}] in arrival order, so pos is non-decreasing
    this.lastMarkPos = -1;
    this.startLevel = Math.round(sampleRate * 0.06); // buffered before a turn starts playing
    this.resumeLevel = Math.round(sampleRate * 0.04); // buffered before resuming after underrun
    this.threshold = this.startLevel;
    this.playing = false;
    this.played = 0; // real audio samples output (not underrun silence)
    this.underruns = 0;
    this.reportEvery = Math.round(sampleRate * 0.05);
    this.sinceReport = 0;
    this.stopped = false;
    this.port.onmessage = (event) => this.onMessage(event.data);
  }

  onMessage(msg) {
    switch (msg.type) {
      case 'pcm':
        this.write(msg.pcm);
        break;
      case 'mark':
        this.marks.push({ id: msg.id, pos: this.writePos });
        this.lastMarkPos = this.writePos;
        break;
      case 'clear':
        // Barge-in: drop everything at once. The main thread has already echoed the pending
        // marks (it keeps its own list), so they are dropped silently here.
        this.readPos = this.writePos;
        this.marks.length = 0;
        this.playing = false;
        this.threshold = this.startLevel;
        this.report();
        break;
      case 'stop':
        this.stopped = true;
        break;
    }
  }

  write(buffer) {
    const view = new DataView(buffer);
    const n = buffer.byteLength >> 1;
    const ring = this.ring;
    const cap = this.capacity;
    let index = this.writePos % cap;
    for (let i = 0; i < n; i++) {
      ring[index] = view.getInt16(i * 2, true) / 32768;
      if (++index === cap) index = 0;
    }
    this.writePos += n;
    // Overflow (should not happen: the gateway paces its audio): the oldest audio goes.
    if (this.writePos - this.readPos > cap) this.readPos = this.writePos - cap;
  }

  process(_inputs, outputs) {
    if (this.stopped) return false;
    const out = outputs[0][0];
    const n = out.length;
    const buffered = this.writePos - this.readPos;
    // A pending mark means the turn's audio is all here: play it even if it is short.
    if (!this.playing && (buffered >= this.threshold || this.marks.length > 0)) this.playing = true;

    let real = 0;
    if (this.playing) {
      real = Math.min(n, buffered);
      const cap = this.capacity;
      let index = this.readPos % cap;
      for (let i = 0; i < real; i++) {
        out[i] = this.ring[index];
        if (++index === cap) index = 0;
      }
      this.readPos += real;
      if (real < n) {
        out.fill(0, real);
        this.playing = false;
        // Ran dry exactly at a mark: the turn ended, the next one buffers as a new turn.
        // Otherwise it is an underrun: re-buffer a little before resuming.
        if (this.readPos === this.lastMarkPos) {
          this.threshold = this.startLevel;
        } else {
          this.threshold = this.resumeLevel;
          this.underruns++;
        }
      }
    } else {
      out.fill(0);
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);

    this.played += real;
    while (this.marks.length > 0 && this.marks[0].pos <= this.readPos) {
      this.port.postMessage({ type: 'mark', id: this.marks.shift().id });
    }
    this.sinceReport += n;
    if (this.sinceReport >= this.reportEvery) this.report();
    return true;
  }

  report() {
    this.sinceReport = 0;
    this.port.postMessage({
      type: 'stats',
      played: this.played,
      buffered: this.writePos - this.readPos,
      underruns: this.underruns,
    });
  }
}

registerProcessor('capture', CaptureProcessor);
registerProcessor('player', PlayerProcessor);
