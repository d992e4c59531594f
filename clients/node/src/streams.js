// Streaming helpers for GenerateStream and Chat: their messages are a oneof `event`,
// `start` once, `delta`s, then `done` (only when the call succeeds).
import { Code, ConnectError } from "@connectrpc/connect";

function deferred() {
  let resolve;
  let reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => {}); // a caller that never awaits it gets no unhandled rejection
  return { promise, resolve, reject };
}

/**
 * The text of a GenerateStream or Chat call as it arrives. Iterate it (once) for the
 * text deltas; `start` and `done` resolve with those events (the stream's error rejects
 * them); `text()` reads the whole stream and resolves with `{text, start, done}`.
 */
export class TextStream {
  #responses;
  #start = deferred();
  #done = deferred();
  #used = false;

  /** @param {AsyncIterable<{event: {case: string | undefined, value?: any}}>} responses */
  constructor(responses) {
    this.#responses = responses;
  }

  /** The `start` event (model, worker; Chat: memories recalled, history length). */
  get start() {
    return this.#start.promise;
  }

  /** The `done` event (finish reason, usage; Chat: session version, replayed). */
  get done() {
    return this.#done.promise;
  }

  async *[Symbol.asyncIterator]() {
    if (this.#used) throw new TypeError("a TextStream can be read once");
    this.#used = true;
    try {
      for await (const response of this.#responses) {
        const { event } = response;
        if (event.case === "start") this.#start.resolve(event.value);
        else if (event.case === "delta") {
          if (event.value.text) yield event.value.text;
        } else if (event.case === "done") this.#done.resolve(event.value);
      }
    } catch (error) {
      this.#start.reject(error);
      this.#done.reject(error);
      throw error;
    }
    const missing = new ConnectError("the stream ended without a done event", Code.DataLoss);
    this.#start.reject(missing); // no-ops once resolved
    this.#done.reject(missing);
  }

  /** Reads the whole stream: `{text, start, done}`. */
  async text() {
    let text = "";
    for await (const delta of this) text += delta;
    return { text, start: await this.start, done: await this.done };
  }
}

/** Wraps the responses of `gateway.generateStream(...)` or `gateway.chat(...)`. */
export function textStream(responses) {
  return new TextStream(responses);
}
