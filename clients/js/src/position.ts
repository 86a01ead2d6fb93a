/**
 * A room's resume position: the cursor in the connected region's sequence and the per-origin
 * version vector (docs/protocol.md §7). Pure data logic, driven by the wire test vectors in
 * crates/protocol/tests/vectors/resume.json.
 */

/** A position in one region's own sequence of a room. */
export interface OriginPosition {
  region: string;
  epoch: string;
  seq: number;
}

/** What the client sends in `hello.resume` for one room. */
export interface ResumeEntry {
  room: string;
  epoch: string;
  seq: number;
  origins?: OriginPosition[];
}

/** A sequenced room event as far as positions are concerned. */
export interface SequencedEvent {
  epoch: string;
  seq: number;
  origin?: OriginPosition;
}

/** One entry of a `hello` reply's `resumed` list. */
export interface ResumedEntry {
  room: string;
  status: "recovered" | "history_lost" | "error" | string;
  epoch?: string;
  seq?: number;
  replayed?: number;
  origins?: OriginPosition[];
  code?: string;
  message?: string;
}

export class RoomPosition {
  /** Cursor: the last event received (or the join position) in the connected region. */
  epoch = "";
  seq = 0;
  /** Per origin region: the last of that region's own events received (or skipped). */
  readonly vector = new Map<string, { epoch: string; seq: number }>();
  /** A `recovered` resume whose replay is still arriving. */
  private pending: { epoch: string; seq: number; region: string; origins: OriginPosition[]; remaining: number } | null = null;

  /** Seeds from a `join` reply in `region`: the cursor, and the vector from `origins` plus the
   * join position for the connected region itself. */
  seedFromJoin(region: string, epoch: string, seq: number, origins: OriginPosition[] = []): void {
    this.epoch = epoch;
    this.seq = seq;
    this.pending = null;
    this.merge(region, epoch, seq, origins);
  }

  /** The `hello.resume` entry for this room. */
  resumeEntry(room: string): ResumeEntry {
    const origins: OriginPosition[] = [];
    for (const [region, p] of this.vector) origins.push({ region, epoch: p.epoch, seq: p.seq });
    origins.sort((a, b) => (a.region < b.region ? -1 : a.region > b.region ? 1 : 0));
    const entry: ResumeEntry = { room, epoch: this.epoch, seq: this.seq };
    if (origins.length > 0) entry.origins = origins;
    return entry;
  }

  /**
   * Applies a `resumed` entry of a hello reply from `region`. Returns `"lost"` for
   * `history_lost` (the cursor and vector are moved to the join position), `"recovered"`, or
   * `"error"` (nothing changed).
   */
  applyResumed(region: string, r: ResumedEntry): "recovered" | "lost" | "error" {
    if (r.status === "recovered" && typeof r.epoch === "string" && typeof r.seq === "number") {
      const replayed = typeof r.replayed === "number" && r.replayed > 0 ? r.replayed : 0;
      if (r.epoch !== this.epoch) {
        // Cross-region resume (or a new epoch): the replay comes in this region's sequence.
        this.epoch = r.epoch;
        this.seq = 0;
      }
      this.pending = { epoch: r.epoch, seq: r.seq, region, origins: r.origins ?? [], remaining: replayed };
      if (replayed === 0) this.finishReplay();
      return "recovered";
    }
    if (r.status === "history_lost" && typeof r.epoch === "string" && typeof r.seq === "number") {
      this.epoch = r.epoch;
      this.seq = r.seq;
      this.pending = null;
      this.merge(region, r.epoch, r.seq, r.origins ?? []);
      return "lost";
    }
    return "error";
  }

  /**
   * Takes one room event received while connected to `region`. Returns whether the app
   * should see it: `false` for an event already received (at or below the cursor in this
   * region, or at or below the vector for its origin).
   */
  accept(region: string, ev: SequencedEvent): boolean {
    if (ev.epoch === this.epoch && ev.seq <= this.seq) return false;
    const o = ev.origin;
    const oRegion = o ? o.region : region;
    const oEpoch = o ? o.epoch : ev.epoch;
    const oSeq = o ? o.seq : ev.seq;
    const known = this.vector.get(oRegion);
    const sameEpoch = known !== undefined && known.epoch === oEpoch;
    const duplicate = sameEpoch && oSeq <= known.seq;
    this.epoch = ev.epoch;
    this.seq = ev.seq;
    if (sameEpoch) {
      if (!duplicate) known.seq = oSeq;
    } else this.vector.set(oRegion, { epoch: oEpoch, seq: oSeq });
    if (this.pending) {
      this.pending.remaining -= 1;
      if (this.pending.remaining <= 0) this.finishReplay();
    }
    return !duplicate;
  }

  /** True while a resume's replay is still arriving. */
  get replaying(): boolean {
    return this.pending !== null;
  }

  private finishReplay(): void {
    const p = this.pending;
    if (!p) return;
    this.pending = null;
    if (this.epoch === p.epoch) this.seq = Math.max(this.seq, p.seq);
    else {
      this.epoch = p.epoch;
      this.seq = p.seq;
    }
    this.merge(p.region, p.epoch, p.seq, p.origins);
  }

  /** Merge by maximum: per region, a position of another epoch replaces ours, one of the same
   * epoch counts when higher. `region`/`epoch`/`seq` is the connected region's own entry. */
  private merge(region: string, epoch: string, seq: number, origins: OriginPosition[]): void {
    const all = [{ region, epoch, seq }, ...origins];
    for (const o of all) {
      if (typeof o?.region !== "string" || typeof o.epoch !== "string" || typeof o.seq !== "number") continue;
      const known = this.vector.get(o.region);
      if (!known || known.epoch !== o.epoch || o.seq > known.seq) {
        this.vector.set(o.region, { epoch: o.epoch, seq: o.seq });
      }
    }
  }
}
