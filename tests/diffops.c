/* diffops: decoder, interpreter, trace recorder and trace equivalence of the
 * differential tester (see diffops.h for the language).
 *
 * Equivalence (do_compare), derived from API.md and the header:
 *
 *  1. Io callbacks within one iteration have no defined order across
 *     backends, so each iteration's io callbacks are compared as a multiset
 *     keyed by slot (one callback per fd per iteration: sorted by slot).
 *     Everything an io callback does is local to its own slot (pair), which
 *     is what makes that sort sound; the records it makes (return codes of
 *     its actions) travel with it.
 *  2. Timers fire in a defined order (due time, then creation) and run
 *     before the io callbacks of the iteration, so timer callbacks may do
 *     anything to any slot and are compared in order.  Timers created from io
 *     callbacks were created in an undefined order: a run of consecutive
 *     firings of such timers in one iteration is compared sorted; their
 *     callbacks do nothing.
 *  3. Return codes of every call are compared exactly, except px_io_mod on a
 *     slot whose fd was closed (or closed and reused) while registered: the
 *     header leaves it to epoll_ctl (epoll -EBADF, select/poll 0).
 *     px_io_add of a closed number is not issued at all (epoll -EBADF,
 *     select/poll register it: documented).
 *  4. A slot whose fd was closed while registered is "tainted" until
 *     px_io_del: the contract only defines that the loop survives, that
 *     px_io_add says -EEXIST and px_io_del 0 (select/poll report PX_ERR once,
 *     epoll nothing; a reused number is watched by select/poll but not by
 *     epoll).  Its io callbacks are recorded, do nothing, and are not
 *     compared.  Every other slot still is, in the same iterations.
 *  5. select cannot see hang-ups or errors (contract): when the other
 *     backend's revents has PX_HUP or PX_ERR, select's must be a non-empty
 *     subset of its PX_READ|PX_WRITE (select reports true readiness only; the
 *     others add every armed direction); otherwise equal.  poll vs epoll:
 *     exact, HUP and ERR included.
 *  6. Snapshots of the sockets (bytes queued each way, which ends are open)
 *     after every "run" op are compared exactly: callbacks that read or
 *     wrote differently show up there.  For that to be meaningful the
 *     callbacks write only when the socket polled writable just before the
 *     iteration's wait (what select saw) and still does (see io_cb): a
 *     PX_WRITE that the contract adds because of PX_HUP, or that a timer
 *     callback made stale, must not make the runs drift apart.
 *  7. ET|WRITE: ET watchers write until EAGAIN whenever they get PX_WRITE,
 *     so a socket is not left idle-writable and epoll's re-reporting of
 *     EPOLLOUT with other events (kernel behaviour, allowed) cannot show,
 *     except when the write fails for good (EPIPE/ECONNRESET): see 8.
 *  8. Relaxations (do_relax, $PX_DIFF_RELAX), for differences that follow
 *     from kernel behaviour or the select clause of the contract:
 *     DO_RELAX_LATEHUP (on by default): a timer callback does not px_io_mod
 *       a slot with a pending hang-up/error.  poll/epoll saw the hang-up in
 *       the iteration's wait and deliver the newly armed directions at once
 *       (PX_HUP with every armed direction); select, which cannot see
 *       hang-ups, sees the readiness one iteration later.
 *     DO_RELAX_ETEOF (on by default: the header documents it): ET
 *       callbacks after the read side reached EOF or a write failed are not
 *       compared and do nothing.  epoll re-reports such an idle direction
 *       (and PX_HUP) on any later wake-up of the socket (a second shutdown,
 *       the peer's close, the peer reading); the select/poll emulation marks
 *       it idle and never reports it again - not even a later hang-up when
 *       every armed direction is idle.
 *  Everything else must match exactly.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "diffops.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

unsigned do_relax = DO_RELAX_DEFAULT;

#define PX_RW_BITS (PX_READ | PX_WRITE)

/* ------------------------------------------------------------------------ */
/* Decoding                                                                   */

static const uint8_t kind_weight[DO_NKINDS] = {
	[DO_ADD] = 12, [DO_MOD] = 8,   [DO_DEL] = 5,    [DO_PWRITE] = 12, [DO_PREAD] = 7,
	[DO_AWRITE] = 4, [DO_AREAD] = 4, [DO_SHUT] = 2, [DO_PCLOSE] = 2,  [DO_ACLOSE] = 2,
	[DO_REOPEN] = 3, [DO_CONF] = 7, [DO_TADD] = 8,  [DO_TDEL] = 4,    [DO_RUN] = 20,
};
static uint8_t kind_table[256];
static int kind_total;

static void init_table(void)
{
	if (kind_total)
		return;
	int n = 0;
	for (int k = 0; k < DO_NKINDS; k++)
		for (int i = 0; i < kind_weight[k]; i++)
			kind_table[n++] = (uint8_t)k;
	kind_total = n;
}

static uint32_t size_class(uint8_t b)
{
	if (b < 160)
		return 1u + b;                       /* 1..160 */
	if (b < 220)
		return 1000u + (uint32_t)(b - 160) * 1500u; /* up to ~90 KB */
	if (b < 245)
		return 65536u;
	return 0; /* until EAGAIN */
}

static void decode_act(struct do_act *a, const uint8_t b[4])
{
	memset(a, 0, sizeof(*a));
	a->kind = kind_table[b[0] % kind_total];
	a->slot = (uint8_t)(b[1] % DO_NSLOTS);
	switch (a->kind) {
	case DO_ADD:
	case DO_MOD:
		a->mask = b[2] & 0x0f;
		if ((b[2] & 0xf0) == 0xf0)
			a->mask |= PX_HUP; /* invalid: -EINVAL everywhere */
		break;
	case DO_PWRITE:
	case DO_PREAD:
	case DO_AWRITE:
	case DO_AREAD:
		a->n = size_class(b[3]);
		break;
	case DO_CONF:
		a->mask = b[2];
		a->flags = (uint8_t)(b[1] >> 4);
		a->n = 1u + (uint32_t)b[3] * 8u;
		break;
	case DO_TADD:
		a->flags = (uint8_t)((b[2] >> 6) == 3 ? 1 : 0) | (uint8_t)((b[2] & 0x30) == 0x30 ? 2 : 0);
		break;
	case DO_TDEL:
		a->flags = (uint8_t)(b[2] & 7); /* 0: self (in a timer cb); 1: io timer; else regular */
		a->n = b[3];
		break;
	case DO_RUN:
		a->n = 1u + b[2] % 3u;
		break;
	default:
		break;
	}
}

void do_decode(struct do_prog *p, const uint8_t *buf, size_t len, int max_ops)
{
	size_t i = 0;

	init_table();
	p->nops = 0;
	if (max_ops > DO_MAXOPS || max_ops <= 0)
		max_ops = DO_MAXOPS;
	while (p->nops < max_ops && i + 4 <= len) {
		struct do_op *op = &p->ops[p->nops];
		decode_act(&op->a, buf + i);
		i += 4;
		op->sub.kind = DO_NKINDS;
		if (op->a.kind == DO_TADD && i + 4 <= len) {
			decode_act(&op->sub, buf + i);
			i += 4;
			if (op->sub.kind == DO_TADD)
				op->sub.flags = 0; /* nested timers: after 0, no action */
		}
		p->nops++;
	}
}

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

void do_generate(struct do_prog *p, uint64_t seed, int nops)
{
	if (nops > DO_MAXOPS)
		nops = DO_MAXOPS;
	size_t len = (size_t)nops * 8;
	uint8_t *buf = malloc(len);
	uint64_t s = seed * 0x2545f4914f6cdd1dull + 1;
	if (!buf) {
		p->nops = 0;
		return;
	}
	for (size_t i = 0; i < len; i += 8) {
		uint64_t v = splitmix(&s);
		memcpy(buf + i, &v, 8);
	}
	do_decode(p, buf, len, nops);
	free(buf);
}

/* ------------------------------------------------------------------------ */
/* Printing                                                                   */

static const char *const kind_name[DO_NKINDS + 1] = {
	"add", "mod", "del", "pwrite", "pread", "awrite", "aread", "shut", "pclose",
	"aclose", "reopen", "conf", "tadd", "tdel", "run", "none",
};

static const char *mask_str(unsigned m, char *buf)
{
	buf[0] = 0;
	if (m & PX_READ)
		strcat(buf, "R");
	if (m & PX_WRITE)
		strcat(buf, "W");
	if (m & PX_ET)
		strcat(buf, "E");
	if (m & PX_ONESHOT)
		strcat(buf, "O");
	if (m & PX_HUP)
		strcat(buf, "H");
	if (m & PX_ERR)
		strcat(buf, "X");
	if (!buf[0])
		strcat(buf, "0");
	return buf;
}

static void print_act(const struct do_act *a, FILE *out)
{
	char mb[16];
	static const char *const rm[] = { "drain", "partial", "none", "drain" };
	static const char *const wm[] = { "none", "fill", "some", "none" };
	static const char *const am[] = { "-", "del", "mod", "readd", "tadd", "reopen", "delclose", "mod0" };

	fprintf(out, "%s", kind_name[a->kind]);
	switch (a->kind) {
	case DO_ADD:
	case DO_MOD:
		fprintf(out, " s%d %s", a->slot, mask_str(a->mask, mb));
		break;
	case DO_PWRITE:
	case DO_PREAD:
	case DO_AWRITE:
	case DO_AREAD:
		if (a->n)
			fprintf(out, " s%d %u", a->slot, a->n);
		else
			fprintf(out, " s%d all", a->slot);
		break;
	case DO_CONF:
		fprintf(out, " s%d r=%s w=%s n=%u next=%s(%s)", a->slot, rm[a->mask & 3],
		        wm[(a->mask >> 2) & 3], a->n, am[(a->mask >> 4) & 7], mask_str(a->flags, mb));
		break;
	case DO_TADD:
		fprintf(out, " after=%s repeat=%s", (a->flags & 1) ? "1h" : "0",
		        (a->flags & 2) ? "1h" : "0");
		break;
	case DO_TDEL:
		fprintf(out, " %s %u", a->flags == 0 ? "self/first" : a->flags == 1 ? "io" : "t",
		        a->n);
		break;
	case DO_RUN:
		fprintf(out, " x%u", a->n);
		break;
	case DO_NKINDS:
		break;
	default:
		fprintf(out, " s%d", a->slot);
	}
}

void do_print_prog(const struct do_prog *p, int from, int to, FILE *out)
{
	if (from < 0)
		from = 0;
	if (to > p->nops)
		to = p->nops;
	for (int i = from; i < to; i++) {
		fprintf(out, "  op %4d: ", i);
		print_act(&p->ops[i].a, out);
		if (p->ops[i].a.kind == DO_TADD) {
			fprintf(out, " -> { ");
			print_act(&p->ops[i].sub, out);
			fprintf(out, " }");
		}
		fprintf(out, "\n");
	}
}

static void print_rec(const struct do_rec *r, FILE *out)
{
	char mb[16], rb[16];

	fprintf(out, "op %4d it %4d ", r->op, r->iter);
	switch (r->type) {
	case R_RC:
		fprintf(out, "%s%s s%d %s -> ", (r->flags & RF_INIO) ? "  [cb] " : "",
		        kind_name[r->kind], r->slot,
		        (r->flags & RF_SKIP) ? "skipped" : "");
		if (r->kind == DO_PWRITE || r->kind == DO_PREAD || r->kind == DO_AWRITE ||
		    r->kind == DO_AREAD)
			fprintf(out, "%lld bytes err %lld", (long long)(r->val / 1000),
			        (long long)(r->val % 1000));
		else
			fprintf(out, "%lld", (long long)r->val);
		break;
	case R_IO:
		fprintf(out, "IO s%d armed=%s revents=%s", r->slot, mask_str(r->kind, mb),
		        mask_str((unsigned)r->val, rb));
		break;
	case R_TIMER:
		fprintf(out, "TIMER %lld%s", (long long)r->val, (r->flags & RF_IOTIMER) ? " (io)" : "");
		break;
	case R_SNAP: {
		long long v = r->val;
		fprintf(out, "SNAP s%d a:%s b:%s a_in=%lld b_in=%lld", r->slot,
		        (v >> 62) & 1 ? "open" : "closed", (v >> 61) & 1 ? "open" : "closed",
		        (v >> 30) & 0x7fffffff, v & 0x3fffffff);
		break;
	}
	}
	if (r->flags & RF_TAINT)
		fprintf(out, " (tainted)");
	if (r->flags & RF_ETEOF)
		fprintf(out, " (et-eof)");
	fprintf(out, "\n");
}

void do_print_trace(const struct do_trace *t, FILE *out)
{
	fprintf(out, "trace of %s (%d records)\n", t->backend, t->n);
	for (int i = 0; i < t->n; i++) {
		fprintf(out, "  ");
		print_rec(&t->r[i], out);
	}
}

void do_trace_free(struct do_trace *t)
{
	free(t->r);
	t->r = NULL;
	t->n = t->cap = 0;
}

/* ------------------------------------------------------------------------ */
/* Interpreter                                                                */

struct run;

struct slot {
	struct run *r;
	int idx;
	int a_open, b_open, reg, tainted;
	unsigned mask;
	int rmode, wmode, act;
	unsigned actmask;
	uint32_t rn, wn;
	int eteof;
	int w_wait; /* a polled writable just before this iteration's wait */
	int fired;  /* a PX_ONESHOT callback ran since the last add/mod */
	unsigned fmask; /* effective mask at the last flush (before a wait) */
	int niot;
};

struct tinfo {
	struct run *r;
	int idx;
	int io;
	int64_t id;
	struct do_act sub;
};

#define IOT_PER_SLOT 64

struct run {
	px_loop *loop;
	struct do_trace *t;
	struct slot s[DO_NSLOTS];
	struct tinfo tm[DO_MAXTIMERS];
	int ntm;
	struct tinfo iot[DO_NSLOTS][IOT_PER_SLOT];
	int iter;
	int op;
	int in_io;
	int setup_err;
};

static uint8_t wbuf[65536];
static uint8_t rbuf[65536];

static int fd_a(int i) { return DO_FD_BASE + 2 * i; }
static int fd_b(int i) { return DO_FD_BASE + 2 * i + 1; }

static void rec(struct run *r, int type, unsigned flags, int slot, int kind, int64_t val)
{
	struct do_trace *t = r->t;

	if (t->n == t->cap) {
		int cap = t->cap ? t->cap * 2 : 1024;
		struct do_rec *n = realloc(t->r, (size_t)cap * sizeof(*n));
		if (!n) {
			t->overflow = 1;
			return;
		}
		t->r = n;
		t->cap = cap;
	}
	struct do_rec *x = &t->r[t->n++];
	x->type = (uint8_t)type;
	x->flags = (uint8_t)(flags | (r->in_io ? RF_INIO : 0));
	x->slot = (uint8_t)slot;
	x->kind = (uint8_t)kind;
	x->op = r->op;
	x->iter = r->iter;
	x->val = val;
}

/* Byte transfers: the trace value is bytes * 1000 + errno (0 for EAGAIN/EOF). */
static int64_t do_write(int fd, uint32_t n)
{
	int64_t total = 0;
	int err = 0;

	for (;;) {
		size_t want = sizeof(wbuf);
		if (n && (uint64_t)(n - total) < want)
			want = (size_t)(n - total);
		if (want == 0)
			break;
		ssize_t k = send(fd, wbuf, want, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (k > 0) {
			total += k;
			continue;
		}
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0 && errno != EAGAIN)
			err = errno;
		break;
	}
	return total * 1000 + err;
}

/* Reads up to n (0: no limit) bytes, until EAGAIN or EOF; *eof set on EOF. */
static int64_t do_read(int fd, uint32_t n, int *eof)
{
	int64_t total = 0;
	int err = 0, errs = 0;

	for (;;) {
		size_t want = sizeof(rbuf);
		if (n && (uint64_t)(n - total) < want)
			want = (size_t)(n - total);
		if (want == 0)
			break;
		ssize_t k = recv(fd, rbuf, want, MSG_DONTWAIT);
		if (k > 0) {
			total += k;
			continue;
		}
		if (k == 0) {
			if (eof)
				*eof = 1;
			break;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN)
			break;
		err = errno; /* e.g. ECONNRESET: pending error; the next read says more */
		if (++errs > 2)
			break;
	}
	return total * 1000 + err;
}

static int open_pair(struct run *r, int i)
{
	int sv[2];

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0)
		return -errno;
	if (dup3(sv[0], fd_a(i), O_CLOEXEC) < 0 || dup3(sv[1], fd_b(i), O_CLOEXEC) < 0) {
		int e = errno;
		close(sv[0]);
		close(sv[1]);
		return -e;
	}
	close(sv[0]);
	close(sv[1]);
	r->s[i].a_open = r->s[i].b_open = 1;
	r->s[i].eteof = 0;
	return 0;
}

static void io_cb(px_loop *loop, int fd, unsigned revents, void *arg);
static void timer_cb(px_loop *loop, int64_t id, void *arg);

static void slot_added(struct slot *s, unsigned mask)
{
	s->reg = 1;
	s->tainted = 0;
	s->mask = s->fmask = mask;
	s->eteof = 0;
	s->fired = 0;
}

static unsigned slot_effective(const struct slot *s)
{
	return s->fired ? s->mask & ~(unsigned)(PX_READ | PX_WRITE) : s->mask;
}

/* px_io_mod(mask) succeeded.  An unchanged mask (the watcher's current one:
 * a fired PX_ONESHOT has no directions left) is a no-op on every backend
 * (header), so the ET state survives it. */
static void slot_modded(struct slot *s, unsigned mask)
{
	if (mask == slot_effective(s))
		return;
	/* Changes reach the kernel at the flush before the next wait, where a
	 * change undone in the meantime is no change (see iterate). */
	s->mask = mask;
	s->fired = 0;
}

static int64_t add_timer(struct run *r, struct tinfo *ti, uint64_t after, uint64_t rep)
{
	int64_t id = px_timer_add(r->loop, after, rep, timer_cb, ti);
	ti->id = id;
	return id > 0 ? 0 : id;
}

/* An io-created timer (after 0, no action). */
static void io_timer(struct run *r, struct slot *s)
{
	if (s->niot >= IOT_PER_SLOT) {
		rec(r, R_RC, RF_SKIP, s->idx, DO_TADD, 0);
		return;
	}
	struct tinfo *ti = &r->iot[s->idx][s->niot];
	ti->r = r;
	ti->idx = 10000 + s->idx * 100 + s->niot;
	ti->io = 1;
	ti->sub.kind = DO_NKINDS;
	s->niot++;
	rec(r, R_RC, 0, s->idx, DO_TADD, add_timer(r, ti, 0, 0));
}

static void exec_act(struct run *r, const struct do_act *a, struct tinfo *self);

static void io_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	struct slot *s = arg;
	struct run *r = s->r;
	int was = r->in_io;
	int rc;

	(void)loop;
	(void)fd;
	r->in_io = 1;
	rec(r, R_IO, (s->tainted ? RF_TAINT : 0) | (s->eteof ? RF_ETEOF : 0), s->idx,
	    (int)s->mask, revents);
	/* Relaxed mode: callbacks of an ET watcher whose read side is at EOF
	 * are not compared, so they must not act either. */
	if (s->tainted || !s->a_open ||
	    ((do_relax & DO_RELAX_ETEOF) && s->eteof && (s->mask & PX_ET))) {
		r->in_io = was;
		return;
	}
	unsigned m = s->mask;
	if (m & PX_ONESHOT) {
		s->fired = 1;
		s->fmask = slot_effective(s); /* re-arming is a change */
	}
	if (revents & PX_READ) {
		int eof = 0;
		if (m & PX_ET)
			(void)do_read(fd, 0, &eof);
		else if (s->rmode == DO_R_PARTIAL)
			(void)do_read(fd, s->rn, &eof);
		else if (s->rmode != DO_R_NONE)
			(void)do_read(fd, 0, &eof);
		if (eof && (m & PX_ET))
			s->eteof = 1;
	}
	/* With PX_HUP/PX_ERR, poll and epoll report every armed direction
	 * (contract) and select only the true readiness; and a PX_WRITE seen by
	 * the wait may be stale once a timer callback of the same iteration
	 * filled the socket.  A unix socket takes writes before it polls
	 * writable (POLLOUT needs 3/4 of sndbuf free), so writing on such a
	 * PX_WRITE would make the runs drift apart by design: the callback
	 * writes only when the socket polled writable just before the
	 * iteration's wait (what select saw) and still does. */
	if (revents & PX_WRITE) {
		struct pollfd pf = { .fd = fd, .events = POLLOUT };
		if (!s->w_wait || poll(&pf, 1, 0) != 1 || !(pf.revents & POLLOUT))
			revents &= ~PX_WRITE;
	}
	if (revents & PX_WRITE) {
		if (m & PX_ET) {
			/* A write error (EPIPE, ECONNRESET) leaves the write side
			 * idle-writable for good: the end of the stream too. */
			if (do_write(fd, 0) % 1000 != 0)
				s->eteof = 1;
		} else if (s->wmode == DO_W_FILL)
			(void)do_write(fd, 0);
		else if (s->wmode == DO_W_SOME)
			(void)do_write(fd, s->wn);
	}
	int act = s->act;
	s->act = DO_A_NONE;
	switch (act) {
	case DO_A_DEL:
		rc = px_io_del(r->loop, fd);
		if (rc == 0)
			s->reg = 0;
		rec(r, R_RC, 0, s->idx, DO_DEL, rc);
		break;
	case DO_A_MOD:
	case DO_A_MOD0: {
		unsigned nm = act == DO_A_MOD ? s->actmask : 0;
		rc = px_io_mod(r->loop, fd, nm);
		if (rc == 0)
			slot_modded(s, nm);
		rec(r, R_RC, 0, s->idx, DO_MOD, rc);
		break;
	}
	case DO_A_READD:
	case DO_A_REOPEN:
	case DO_A_DELCLOSE:
		rc = px_io_del(r->loop, fd);
		if (rc == 0)
			s->reg = 0;
		rec(r, R_RC, 0, s->idx, DO_DEL, rc);
		if (act == DO_A_DELCLOSE) {
			close(fd);
			s->a_open = 0;
			break;
		}
		if (act == DO_A_REOPEN) {
			rc = open_pair(r, s->idx);
			rec(r, R_RC, 0, s->idx, DO_REOPEN, rc);
		}
		rc = px_io_add(r->loop, fd, s->actmask, io_cb, s);
		if (rc == 0)
			slot_added(s, s->actmask);
		rec(r, R_RC, 0, s->idx, DO_ADD, rc);
		break;
	case DO_A_TADD:
		io_timer(r, s);
		break;
	default:
		break;
	}
	r->in_io = was;
}

static void timer_cb(px_loop *loop, int64_t id, void *arg)
{
	struct tinfo *ti = arg;
	struct run *r = ti->r;

	(void)loop;
	(void)id;
	rec(r, R_TIMER, ti->io ? RF_IOTIMER : 0, 0, 0, ti->idx);
	if (ti->sub.kind != DO_NKINDS)
		exec_act(r, &ti->sub, ti);
}

static void snapshot(struct run *r)
{
	for (int i = 0; i < DO_NSLOTS; i++) {
		struct slot *s = &r->s[i];
		int qa = 0, qb = 0;
		if (s->a_open && ioctl(fd_a(i), FIONREAD, &qa) != 0)
			qa = -1;
		if (s->b_open && ioctl(fd_b(i), FIONREAD, &qb) != 0)
			qb = -1;
		int64_t v = ((int64_t)s->a_open << 62) | ((int64_t)s->b_open << 61) |
		            ((int64_t)(qa & 0x7fffffff) << 30) | (int64_t)(qb & 0x3fffffff);
		rec(r, R_SNAP, 0, i, 0, v);
	}
}

/* The socket has a hang-up or an error pending (what poll/epoll report as
 * PX_HUP/PX_ERR and select cannot see). */
static int hung_up(int fd)
{
	struct pollfd pf = { .fd = fd, .events = POLLIN | POLLRDHUP };
	return poll(&pf, 1, 0) == 1 && (pf.revents & (POLLHUP | POLLRDHUP | POLLERR));
}

/* One PX_RUN_NOWAIT iteration. */
static void iterate(struct run *r)
{
	r->iter++;
	for (int j = 0; j < DO_NSLOTS; j++) {
		struct slot *sj = &r->s[j];
		if (sj->reg && slot_effective(sj) != sj->fmask) {
			sj->eteof = 0;
			sj->fmask = slot_effective(sj);
		}
	}
	for (int j = 0; j < DO_NSLOTS; j++) {
		struct pollfd pf = { .fd = fd_a(j), .events = POLLOUT };
		r->s[j].w_wait = r->s[j].a_open && poll(&pf, 1, 0) == 1 && (pf.revents & POLLOUT);
	}
	int rc = px_loop_run(r->loop, PX_RUN_NOWAIT);
	if (rc != 0)
		rec(r, R_RC, 0, 0, DO_RUN, rc);
}

static void exec_act(struct run *r, const struct do_act *a, struct tinfo *self)
{
	struct slot *s = &r->s[a->slot];
	int i = a->slot;
	int64_t v;
	int rc;

	switch (a->kind) {
	case DO_ADD:
		if (!s->a_open) {
			/* px_io_add of a closed number: undefined (epoll -EBADF,
			 * select/poll accept it and report PX_ERR): not done. */
			rec(r, R_RC, RF_SKIP, i, a->kind, 0);
			break;
		}
		rc = px_io_add(r->loop, fd_a(i), a->mask, io_cb, s);
		if (rc == 0)
			slot_added(s, a->mask);
		rec(r, R_RC, 0, i, a->kind, rc);
		break;
	case DO_MOD: {
		int undefined = s->reg && (s->tainted || !s->a_open);
		if (self && (do_relax & DO_RELAX_LATEHUP) && s->a_open && hung_up(fd_a(i))) {
			rec(r, R_RC, RF_SKIP, i, a->kind, 0);
			break;
		}
		rc = px_io_mod(r->loop, fd_a(i), a->mask);
		if (rc == 0)
			slot_modded(s, a->mask);
		rec(r, R_RC, undefined ? RF_TAINT : 0, i, a->kind, rc);
		break;
	}
	case DO_DEL:
		rc = px_io_del(r->loop, fd_a(i));
		if (rc == 0) {
			s->reg = 0;
			s->tainted = 0;
		}
		rec(r, R_RC, 0, i, a->kind, rc);
		break;
	case DO_PWRITE:
	case DO_PREAD:
	case DO_AWRITE:
	case DO_AREAD: {
		int on_a = a->kind == DO_AWRITE || a->kind == DO_AREAD;
		if (!(on_a ? s->a_open : s->b_open)) {
			rec(r, R_RC, RF_SKIP, i, a->kind, 0);
			break;
		}
		int fd = on_a ? fd_a(i) : fd_b(i);
		if (a->kind == DO_PWRITE || a->kind == DO_AWRITE)
			v = do_write(fd, a->n);
		else
			v = do_read(fd, a->n, NULL);
		rec(r, R_RC, 0, i, a->kind, v);
		break;
	}
	case DO_SHUT:
		if (!s->b_open) {
			rec(r, R_RC, RF_SKIP, i, a->kind, 0);
			break;
		}
		rc = shutdown(fd_b(i), SHUT_WR) == 0 ? 0 : -errno;
		rec(r, R_RC, 0, i, a->kind, rc);
		break;
	case DO_PCLOSE:
		if (!s->b_open) {
			rec(r, R_RC, RF_SKIP, i, a->kind, 0);
			break;
		}
		close(fd_b(i));
		s->b_open = 0;
		rec(r, R_RC, 0, i, a->kind, 0);
		break;
	case DO_ACLOSE:
		if (!s->a_open) {
			rec(r, R_RC, RF_SKIP, i, a->kind, 0);
			break;
		}
		close(fd_a(i));
		s->a_open = 0;
		if (s->reg)
			s->tainted = 1;
		rec(r, R_RC, 0, i, a->kind, 0);
		break;
	case DO_REOPEN:
		if (s->reg)
			s->tainted = 1; /* close + reuse of a registered number */
		rc = open_pair(r, i);
		if (rc < 0)
			r->setup_err = rc;
		rec(r, R_RC, 0, i, a->kind, rc);
		break;
	case DO_CONF:
		s->rmode = a->mask & 3;
		if (s->rmode == 3)
			s->rmode = DO_R_DRAIN;
		s->wmode = (a->mask >> 2) & 3;
		if (s->wmode == 3)
			s->wmode = DO_W_NONE;
		s->act = (a->mask >> 4) & 7;
		s->actmask = a->flags & 0x0f;
		s->rn = s->wn = a->n;
		break;
	case DO_TADD: {
		if (r->ntm >= DO_MAXTIMERS) {
			rec(r, R_RC, RF_SKIP, 0, a->kind, 0);
			break;
		}
		struct tinfo *ti = &r->tm[r->ntm];
		ti->r = r;
		ti->idx = r->ntm++;
		ti->io = 0;
		ti->sub.kind = DO_NKINDS;
		if (!self)
			ti->sub = ((const struct do_op *)a)->sub;
		uint64_t after = (a->flags & 1) ? 3600000u : 0, rep = (a->flags & 2) ? 3600000u : 0;
		rec(r, R_RC, 0, 0, a->kind, add_timer(r, ti, after, rep));
		break;
	}
	case DO_TDEL: {
		struct tinfo *ti = NULL;
		if (a->flags == 0 && self)
			ti = self;
		else if (a->flags == 1) {
			struct slot *ts = &r->s[a->n % DO_NSLOTS];
			if (ts->niot)
				ti = &r->iot[ts->idx][(a->n / DO_NSLOTS) % (unsigned)ts->niot];
		} else if (r->ntm) {
			ti = &r->tm[a->n % (unsigned)r->ntm];
		}
		if (!ti) {
			rec(r, R_RC, RF_SKIP, 0, a->kind, 0);
			break;
		}
		rc = px_timer_del(r->loop, ti->id);
		rec(r, R_RC, 0, 0, a->kind, rc);
		break;
	}
	case DO_RUN:
		if (self) {
			/* From a callback: -EBUSY. */
			rc = px_loop_run(r->loop, PX_RUN_NOWAIT);
			rec(r, R_RC, 0, 0, a->kind, rc);
			break;
		}
		for (uint32_t k = 0; k < a->n; k++)
			iterate(r);
		snapshot(r);
		break;
	default:
		break;
	}
}

int do_run(const struct do_prog *p, const char *backend, struct do_trace *t)
{
	struct run *r = calloc(1, sizeof(*r));
	int rc = 0;

	if (!r)
		return -ENOMEM;
	memset(t, 0, sizeof(*t));
	t->backend = backend;
	r->t = t;
	r->loop = px_loop_new_backend(backend);
	if (!r->loop) {
		rc = -errno;
		free(r);
		return rc;
	}
	for (int i = 0; i < DO_NSLOTS; i++) {
		r->s[i].r = r;
		r->s[i].idx = i;
		if ((rc = open_pair(r, i)) < 0)
			goto out;
	}
	for (int i = 0; i < p->nops && !r->setup_err; i++) {
		r->op = i;
		/* The top-level op carries its sub (tadd reads it through the cast). */
		exec_act(r, &p->ops[i].a, NULL);
	}
	r->op = p->nops;
	iterate(r);
	snapshot(r);
	rc = r->setup_err;
out:
	px_loop_free(r->loop);
	for (int i = 0; i < DO_NSLOTS; i++) {
		if (r->s[i].a_open)
			close(fd_a(i));
		if (r->s[i].b_open)
			close(fd_b(i));
	}
	free(r);
	return rc;
}

/* ------------------------------------------------------------------------ */
/* Equivalence                                                                */

static int cmp_slot(const void *x, const void *y)
{
	const struct do_rec *a = x, *b = y;
	if (a->slot != b->slot)
		return a->slot < b->slot ? -1 : 1;
	return 0;
}

/* Stable insertion sort on small runs (qsort is not stable). */
static void sort_run(struct do_rec *v, int n, int by_val)
{
	for (int i = 1; i < n; i++) {
		struct do_rec x = v[i];
		int j = i - 1;
		while (j >= 0 && (by_val ? v[j].val > x.val : cmp_slot(&v[j], &x) > 0)) {
			v[j + 1] = v[j];
			j--;
		}
		v[j + 1] = x;
	}
}

/* The canonical form: tainted io callbacks dropped, io sections sorted by
 * slot, runs of io-created timer firings sorted by index. */
static struct do_rec *canon(const struct do_trace *t, int *np)
{
	struct do_rec *v = malloc((size_t)(t->n ? t->n : 1) * sizeof(*v));
	int n = 0;

	if (!v)
		return NULL;
	for (int i = 0; i < t->n; i++) {
		const struct do_rec *x = &t->r[i];
		if (x->type == R_IO && (x->flags & RF_TAINT))
			continue;
		if (x->type == R_IO && (x->flags & RF_ETEOF) && (do_relax & DO_RELAX_ETEOF))
			continue;
		v[n++] = *x;
	}
	for (int i = 0; i < n;) {
		int j = i + 1;
		if (v[i].flags & RF_INIO) {
			while (j < n && (v[j].flags & RF_INIO) && v[j].iter == v[i].iter)
				j++;
			sort_run(v + i, j - i, 0);
		} else if (v[i].type == R_TIMER && (v[i].flags & RF_IOTIMER)) {
			while (j < n && v[j].type == R_TIMER && (v[j].flags & RF_IOTIMER) &&
			       v[j].iter == v[i].iter)
				j++;
			sort_run(v + i, j - i, 1);
		}
		i = j;
	}
	*np = n;
	return v;
}

static int is_select(const struct do_trace *t)
{
	return strcmp(t->backend, "select") == 0;
}

static int rec_equiv(const struct do_rec *x, const struct do_rec *y, int xsel, int ysel)
{
	if (x->type != y->type || x->op != y->op || x->iter != y->iter || x->slot != y->slot ||
	    x->kind != y->kind || (x->flags & ~(RF_TAINT | RF_ETEOF)) != (y->flags & ~(RF_TAINT | RF_ETEOF)))
		return 0;
	switch (x->type) {
	case R_RC:
		if ((x->flags | y->flags) & RF_TAINT)
			return 1;
		return x->val == y->val;
	case R_IO: {
		unsigned a = (unsigned)x->val, b = (unsigned)y->val;
		const unsigned bad = PX_HUP | PX_ERR;
		if (xsel == ysel)
			return a == b;
		unsigned s = xsel ? a : b, o = xsel ? b : a;
		if (s & bad)
			return 0; /* select never reports these except for closed fds */
		if (o & bad)
			return (s & PX_RW_BITS) != 0 && (s & ~o & PX_RW_BITS) == 0;
		return s == o;
	}
	default:
		return x->val == y->val;
	}
}

int do_compare(const struct do_prog *p, const struct do_trace *x, const struct do_trace *y,
               FILE *out)
{
	int nx, ny, ok = 1;
	struct do_rec *cx = canon(x, &nx), *cy = canon(y, &ny);
	int xsel = is_select(x), ysel = is_select(y);
	int i = 0;

	if (!cx || !cy) {
		free(cx);
		free(cy);
		return 1; /* out of memory: nothing to say */
	}
	for (; i < nx && i < ny; i++)
		if (!rec_equiv(&cx[i], &cy[i], xsel, ysel))
			break;
	if (i < nx || i < ny || x->overflow || y->overflow)
		ok = 0;
	if (!ok && out) {
		const struct do_rec *d = i < nx ? &cx[i] : i < ny ? &cy[i] : NULL;
		int op = d ? d->op : p->nops;
		fprintf(out, "difference between %s and %s at op %d (canonical record %d)\n",
		        x->backend, y->backend, op, i);
		fprintf(out, "program up to op %d:\n", op);
		do_print_prog(p, 0, op + 1, out);
		int from = i;
		while (from > 0 && from > i - 40 && cx[from - 1].op >= op - 3)
			from--;
		for (int k = 0; k < 2; k++) {
			const struct do_trace *t = k ? y : x;
			struct do_rec *c = k ? cy : cx;
			int n = k ? ny : nx;
			fprintf(out, "%s (canonical, records %d..):\n", t->backend, from);
			for (int j = from; j < n && j < i + 12; j++) {
				fprintf(out, "%s", j == i ? "=>" : "  ");
				print_rec(&c[j], out);
			}
			if (i >= n)
				fprintf(out, "=>(end of trace)\n");
		}
	}
	free(cx);
	free(cy);
	return ok;
}

int do_check_all(const struct do_prog *p, FILE *out)
{
	const char *const *be = px_backends();
	struct do_trace t[8];
	int n = 0, bad = 0, rc;

	for (; be[n] && n < 8; n++) {
		rc = do_run(p, be[n], &t[n]);
		if (rc < 0) {
			if (out)
				fprintf(out, "run on %s failed: %s\n", be[n], strerror(-rc));
			for (int k = 0; k <= n; k++)
				do_trace_free(&t[k]);
			return rc;
		}
	}
	for (int a = 0; a < n; a++)
		for (int b = a + 1; b < n; b++)
			if (!do_compare(p, &t[a], &t[b], out))
				bad++;
	for (int k = 0; k < n; k++)
		do_trace_free(&t[k]);
	return bad;
}
