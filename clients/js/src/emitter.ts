/** A small typed event emitter with async-iterator access. Listener exceptions are caught and
 * reported to `console.error`, so an app's bug cannot break the client's event loop. */
export type Listener<T> = (value: T) => void;

export class Emitter<M extends object> {
  private listeners = new Map<keyof M, Set<Listener<never>>>();
  private iterators = new Set<{ end: () => void }>();

  /** Calls `listener` for every `event`; returns a function that removes it. */
  on<K extends keyof M>(event: K, listener: Listener<M[K]>): () => void {
    let set = this.listeners.get(event);
    if (!set) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(listener as Listener<never>);
    return () => this.off(event, listener);
  }

  /** Removes a listener added with `on`. */
  off<K extends keyof M>(event: K, listener: Listener<M[K]>): void {
    this.listeners.get(event)?.delete(listener as Listener<never>);
  }

  /** Calls `listener` for the next `event` only. */
  once<K extends keyof M>(event: K, listener: Listener<M[K]>): () => void {
    const off = this.on(event, (v) => {
      off();
      listener(v);
    });
    return off;
  }

  /**
   * The `event`s as an async iterator, from now on, each exactly once, in order. It ends when
   * the emitter is closed (the client's `close()`), when `signal` aborts, or when the loop
   * breaks. Values wait in memory until the loop takes them: consume it.
   */
  iterate<K extends keyof M>(event: K, options: { signal?: AbortSignal } = {}): AsyncIterableIterator<M[K]> {
    const queue: M[K][] = [];
    let wake: (() => void) | null = null;
    let done = false;
    const off = this.on(event, (v) => {
      queue.push(v);
      wake?.();
    });
    const handle = {
      end: () => {
        done = true;
        off();
        this.iterators.delete(handle);
        wake?.();
      },
    };
    this.iterators.add(handle);
    options.signal?.addEventListener("abort", handle.end, { once: true });
    if (options.signal?.aborted) handle.end();
    const iterator: AsyncIterableIterator<M[K]> = {
      next: async (): Promise<IteratorResult<M[K]>> => {
        for (;;) {
          if (queue.length > 0) return { value: queue.shift() as M[K], done: false };
          if (done) return { value: undefined, done: true };
          await new Promise<void>((resolve) => {
            wake = () => {
              wake = null;
              resolve();
            };
          });
        }
      },
      return: async (): Promise<IteratorResult<M[K]>> => {
        handle.end();
        queue.length = 0;
        return { value: undefined, done: true };
      },
      [Symbol.asyncIterator]() {
        return iterator;
      },
    };
    return iterator;
  }

  protected emit<K extends keyof M>(event: K, value: M[K]): void {
    const set = this.listeners.get(event);
    if (!set) return;
    // One listener (the common case) needs no snapshot of the set.
    for (const listener of set.size === 1 ? set : [...set]) {
      try {
        (listener as Listener<M[K]>)(value);
      } catch (e) {
        console.error(`meridian-client: a '${String(event)}' listener threw`, e);
      }
    }
  }

  /** Ends every async iterator (they finish after the values already queued). */
  protected endIterators(): void {
    for (const it of [...this.iterators]) it.end();
  }
}
