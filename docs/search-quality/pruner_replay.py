"""Replay pruner rules on the full 5-epoch learning curves of the unpruned searches (tpe-none) in a
search_quality studies.db: python docs/search-quality/pruner_replay.py SQ_OUT/studies.db. The replay
keeps the trial order of the unpruned search (a real pruned TPE search would sample differently)."""
import sqlite3, sys
import numpy as np
db = sys.argv[1]
con = sqlite3.connect(db)
studies = dict(con.execute("select study_name, study_id from studies"))
def curves(name):
    sid = studies[name]
    rows = con.execute("""select t.number, v.step, v.intermediate_value from trials t
        join trial_intermediate_values v on v.trial_id=t.trial_id where t.study_id=? and t.state='COMPLETE'
        order by t.number, v.step""", (sid,)).fetchall()
    out = {}
    for n, s, v in rows:
        out.setdefault(n, {})[s] = v
    return [out[n] for n in sorted(out)]
E = 5
def simulate(cs, keep=50.0, startup=5, warmup=1, ref="complete"):
    done = []  # (state, curve seen)
    spent = 0
    for c in cs:
        seen = {}
        state = "complete"
        for s in range(1, E + 1):
            seen[s] = c[s]
            spent += 1
            if s == E:
                break
            fin = [x for st, x in done if st == "complete"] if ref == "complete" else [x for st, x in done]
            ncomp = sum(1 for st, _ in done if st == "complete") if ref == "complete" else len(done)
            if ncomp < startup or s < warmup:
                continue
            vals = [x[s] for x in fin if s in x]
            if not vals:
                continue
            thr = np.percentile(vals, 100 - keep)
            if max(seen.values()) < thr:
                state = "pruned"
                break
        done.append((state, seen))
    best = max((x[E] for st, x in done if st == "complete"), default=None)
    return spent, best, sum(st == "complete" for st, _ in done)
rules = {
    "median after 2 (old)": dict(keep=50, startup=2),
    "median after 5 (now)": dict(keep=50, startup=5),
    "keep top 60% after 5": dict(keep=60, startup=5),
    "keep top 40% after 5": dict(keep=40, startup=5),
    "keep top 25% after 5": dict(keep=25, startup=5),
    "median after 3": dict(keep=50, startup=3),
    "median after 4": dict(keep=50, startup=4),
    "keep top 40% after 4": dict(keep=40, startup=4),
    "median after 5, from epoch 2": dict(keep=50, startup=5, warmup=2),
    "median over complete+pruned after 5": dict(keep=50, startup=5, ref="all"),
}
names = [n for n in studies if n.startswith("tpe-none-r")]
print("study", "true best", sep="\t")
for n in sorted(names):
    cs = curves(n)
    print(n, len(cs), "trials, true best", max(c[E] for c in cs))
for rule, kw in rules.items():
    row = []
    tot = 0
    for n in sorted(names):
        cs = curves(n)
        spent, best, ncomp = simulate(cs, **kw)
        tot += spent
        row.append(f"{n[-2:]}: {spent} epochs, best {best}, {ncomp} finished")
    print(f"{rule:40s} | " + " | ".join(row))
