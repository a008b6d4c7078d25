/* diffops: decoder, interpreter, trace recorder and trace equivalence of the
 * differential tester (see diffops.h for the language).
 *
 * Equivalence (do_compare), derived from API.md and the header:
 *
 *  1. Io callbacks within one iteration have no defined order across
 *     backends, so each iteration's io callbacks are compared as a multiset
 *     keyed by slot (one callback per fd per iteration: sorted by slot).
 *     Everything an io callback does is local to its own slot (pair, copies),
 *     which is what makes that sort sound; the records it makes (return
 *     codes of its actions) travel with it.
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
 *     When the closed file lives on elsewhere (a dup, a child, a copy in
 *     flight or received over SCM_RIGHTS), epoll keeps the old registration
 *     in its set ("only px_io_del before close is safe"): the number stays
 *     "poisoned" - treated as tainted, whatever is registered there later -
 *     until the interpreter's bookkeeping of copies says the last one is
 *     gone.  A px_io_del BEFORE the close is the safe order: then nothing is
 *     relaxed, copies or not (this is what the copy operations test).
 *  5. select cannot see hang-ups or errors (contract): when the other
 *     backend's revents has PX_HUP or PX_ERR, select's must be a non-empty
 *     subset of its PX_READ|PX_WRITE (select reports true readiness only; the
 *     others add every armed direction); otherwise equal.  poll vs epoll:
 *     exact, HUP and ERR included.
 *  6. Snapshots of the slots (kind of file, bytes queued each way or the
 *     eventfd count, which ends are open) after every "run" op are compared
 *     exactly: callbacks that read or wrote differently show up there.  For
 *     that to be meaningful the callbacks write only to socketpairs, and only
 *     when the socket polled writable just before the iteration's wait
 *     (what select saw) and still does (see io_cb): a PX_WRITE that the
 *     contract adds because of PX_HUP, or that a timer callback made stale,
 *     must not make the runs drift apart.
 *  7. ET|WRITE: ET watchers write until EAGAIN whenever they get PX_WRITE,
 *     so a socket is not left idle-writable and epoll's re-reporting of
 *     EPOLLOUT with other events (kernel behaviour, allowed) cannot show,
 *     except when the write fails for good (EPIPE/ECONNRESET): see 8.
 *     Files that cannot be written until EAGAIN (UDP: datagrams to loopback
 *     are dropped, not refused; eventfd) have PX_WRITE taken out of PX_ET
 *     masks by the interpreter (fit_mask): ET on a direction that cannot be
 *     drained is undefined.  A pipe's read end is never writable: PX_WRITE
 *     is taken out of its masks (it could only ever report a hang-up, which
 *     select cannot see at all).
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
 *       every armed direction is idle.  (That "never again" is checked per
 *       backend: V_ETSPIN.)
 *  9. Regular files (reuse ... file, refuse): the contract differs per
 *     backend on purpose - px_io_add gives -EPERM on epoll and registers on
 *     select/poll, which report a regular file always ready; a change the
 *     kernel refuses at the flush comes back on epoll as one PX_ERR callback
 *     (armed directions | PX_ERR), after which the watcher is disarmed.  From
 *     the px_io_add (or refuse) of a regular file until the slot's next
 *     px_io_del, the slot's records carry RF_FILE: compared exactly between
 *     select and poll, not compared between epoll and the others; epoll's
 *     side is checked by the interpreter instead (V_EPERM, V_NOERR,
 *     V_FILECB), and so is select's and poll's "always ready" for armed
 *     level watchers (V_FILEQUIET).  Such callbacks do nothing.
 * 10. many: the per-iteration callback counts of the extra fds (R_MANY with
 *     RF_NOCMP) depend on each backend's batching and are not compared; the
 *     summary record is.  The relation is checked per backend: every fd
 *     called at most once per iteration, only while it has its byte unread,
 *     only with PX_READ, and every ready fd called within ceil(ready/960) + 2
 *     iterations (a wait reports at most a batch of 1024 events, rotating;
 *     select loses up to 63 at a word boundary).  The slots are disarmed
 *     (px_io_mod 0, recorded) for the phase and re-armed after it: which of
 *     more than a batch of ready fds a wait reports is each backend's own
 *     choice, so slot callbacks among them could not be compared.  Due
 *     timers fire in an ordinary iteration just before.
 *  Everything else must match exactly.
 *
 * Invariants checked by the interpreter on every backend (R_ERR records, see
 * enum do_viol), for slots that are not tainted or poisoned: a callback's
 * registration is alive (each px_io_add passes its own token as arg), was not
 * made during the same iteration, gets one callback per iteration, revents
 * within the current (effective) mask, and revents justified by the fd's
 * current file: PX_READ by POLLIN (or a hang-up/error), PX_WRITE by POLLOUT,
 * PX_HUP by POLLHUP/POLLRDHUP, PX_ERR by POLLERR, as poll() saw the file just
 * before the wait or sees it in the callback.  A callback for a new file at a
 * reused number that carries the old file's readiness fails that test.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "portable.h" /* config.h first */
#include "diffops.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#ifdef HAVE_SYS_EVENTFD_H
#include <sys/eventfd.h>
#endif
#include <sys/ioctl.h>
#ifdef HAVE_SYS_PRCTL_H
#include <sys/prctl.h>
#endif
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

unsigned do_relax = DO_RELAX_DEFAULT;
unsigned do_many_gate = 8;
unsigned do_last_viol;
unsigned do_viol_ignore;

#define PX_RW_BITS (PX_READ | PX_WRITE)
#define PX_ALL_BITS (PX_READ | PX_WRITE | PX_ET | PX_ONESHOT)

/* ------------------------------------------------------------------------ */
/* Decoding                                                                   */

static const uint8_t kind_weight[DO_NKINDS] = {
	[DO_ADD] = 12, [DO_MOD] = 8,   [DO_DEL] = 5,    [DO_PWRITE] = 12, [DO_PREAD] = 7,
	[DO_AWRITE] = 4, [DO_AREAD] = 4, [DO_SHUT] = 2, [DO_PCLOSE] = 2,  [DO_ACLOSE] = 2,
	[DO_REOPEN] = 3, [DO_CONF] = 7, [DO_TADD] = 8,  [DO_TDEL] = 4,    [DO_RUN] = 20,
	[DO_DUP] = 3,   [DO_DUP2] = 1,  [DO_DUPCLOSE] = 2, [DO_FORK] = 1, [DO_SCM] = 2,
	[DO_REUSE] = 4, [DO_REFUSE] = 1, [DO_MANY] = 1,
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
	if (a->kind == DO_MANY && b[2] >= do_many_gate) {
		/* Rare by design: it costs thousands of fds. */
		a->kind = DO_RUN;
		a->slot = 0;
		a->n = 1;
		return;
	}
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
	case DO_DUP2:
		a->n = b[3] % DO_NCOPY;
		break;
	case DO_DUPCLOSE:
		a->n = b[3];
		break;
	case DO_FORK:
		a->slot = 0;
		a->flags = (b[2] & 3) == 3; /* 1: end a child */
		a->n = b[3];
		break;
	case DO_SCM:
		a->flags = (uint8_t)(b[2] & 3);
		if (a->flags == 3)
			a->flags = 0;
		break;
	case DO_REUSE:
		a->mask = b[2] & 0x0f;
		a->n = b[3] % DO_K_N;
		break;
	case DO_REFUSE:
		a->mask = b[2] & 0x0f;
		break;
	case DO_MANY:
		a->slot = 0;
		a->n = b[3];
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

/* many k: the shape of the phase */
struct many_shape {
	int m;       /* extra socketpairs */
	int q;       /* every q-th one gets a byte (is ready) */
	int refuse;  /* plus a refused change in the first flush */
	int consume; /* odd ones read their byte when called */
};

static struct many_shape many_shape(uint32_t n)
{
	static const int qs[4] = { 1, 1, 2, 3 };
	struct many_shape h = {
		.m = 2100 + (int)(n & 3) * 50,
		.q = qs[(n >> 2) & 3],
		.refuse = (int)((n >> 4) & 1),
		.consume = (int)((n >> 5) & 1),
	};
	return h;
}

/* ------------------------------------------------------------------------ */
/* Printing                                                                   */

static const char *const kind_name[DO_NKINDS + 1] = {
	"add",  "mod",  "del",      "pwrite", "pread", "awrite", "aread",  "shut",
	"pclose", "aclose", "reopen", "conf", "tadd",  "tdel",   "run",    "dup",
	"dup2", "dupclose", "fork", "scm",    "reuse", "refuse", "many",   "none",
};

static const char *const reuse_name[DO_K_N] = {
	"sock", "pipe", "file", "udp", "udp+dgram", "eventfd", "eventfd+count",
};

static const char *const act_name[DO_A_N] = {
	"-", "del", "mod", "readd", "tadd", "reopen", "delclose", "mod0", "reuse", "dupreopen",
};

static const char *const viol_name[V_N] = {
	"none",          "dead-registration", "stale",          "twice",
	"mask",          "stray",             "epoll-eperm",    "epoll-no-err",
	"epoll-file-cb", "et-eof-spin",       "fd",             "many-dead",
	"many-twice",    "many-not-ready",    "many-revents",   "many-starved",
	"many-refuse",   "many-rc",           "file-not-reported",
};

const char *do_viol_name(int v)
{
	return v > 0 && v < V_N ? viol_name[v] : "?";
}

unsigned do_viol_parse(const char *list)
{
	unsigned m = 0;

	while (list && *list) {
		size_t n = strcspn(list, ", ");
		for (int v = 1; v < V_N; v++)
			if (n == strlen(viol_name[v]) && !strncmp(list, viol_name[v], n))
				m |= 1u << v;
		list += n;
		list += strspn(list, ", ");
	}
	return m;
}

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
	static const char *const sm[] = { "recv", "fly", "drain", "recv" };

	fprintf(out, "%s", kind_name[a->kind]);
	switch (a->kind) {
	case DO_ADD:
	case DO_MOD:
	case DO_REFUSE:
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
	case DO_CONF: {
		int act = (a->mask >> 4) % DO_A_N;
		fprintf(out, " s%d r=%s w=%s n=%u next=%s(%s", a->slot, rm[a->mask & 3],
		        wm[(a->mask >> 2) & 3], a->n, act_name[act], mask_str(a->flags, mb));
		if (act == DO_A_REUSE)
			fprintf(out, " %s", reuse_name[((a->n - 1) / 8) % DO_K_N]);
		fprintf(out, ")");
		break;
	}
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
	case DO_DUP2:
	case DO_DUPCLOSE:
		fprintf(out, " s%d %u", a->slot, a->n);
		break;
	case DO_FORK:
		fprintf(out, " %s", a->flags ? "end" : "spawn");
		break;
	case DO_SCM:
		fprintf(out, " s%d %s", a->slot, sm[a->flags & 3]);
		break;
	case DO_REUSE:
		fprintf(out, " s%d %s %s", a->slot, reuse_name[a->n % DO_K_N], mask_str(a->mask, mb));
		break;
	case DO_MANY: {
		struct many_shape h = many_shape(a->n);
		fprintf(out, " %d pairs, 1/%d ready%s%s", h.m, h.q, h.refuse ? ", refuse" : "",
		        h.consume ? ", consume" : "");
		break;
	}
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

static const char *const fk_name[] = { "sock", "pipe", "file", "udp", "eventfd", "?", "?", "?" };

static void print_rec(const struct do_rec *r, FILE *out)
{
	char mb[16], rb[16];

	fprintf(out, "op %4d it %4d ", r->op, r->iter);
	switch (r->type) {
	case R_RC:
		fprintf(out, "%s%s s%d %s -> ", (r->flags & RF_INIO) ? "  [cb] " : "",
		        kind_name[r->kind < DO_NKINDS ? r->kind : DO_NKINDS], r->slot,
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
		fprintf(out, "SNAP s%d %s a:%s b:%s a_in=%lld b_in=%lld", r->slot,
		        fk_name[(v >> 58) & 7], (v >> 62) & 1 ? "open" : "closed",
		        (v >> 61) & 1 ? "open" : "closed", (v >> 30) & 0x0fffffff, v & 0x3fffffff);
		break;
	}
	case R_ERR:
		fprintf(out, "VIOLATION %s s%d detail 0x%llx", do_viol_name(r->kind), r->slot,
		        (unsigned long long)r->val);
		break;
	case R_MANY:
		if (r->kind == 0)
			fprintf(out, "MANY %lld callbacks", (long long)r->val);
		else
			fprintf(out, "MANY done: %lld pairs, %lld ready%s%s%s", (long long)(r->val & 0xffff),
			        (long long)((r->val >> 16) & 0xffff), (r->val >> 32) & 1 ? ", refuse" : "",
			        (r->val >> 33) & 1 ? ", consume" : "", (r->val >> 34) & 3 ? ", rc errors" : "");
		break;
	}
	if (r->flags & RF_TAINT)
		fprintf(out, " (tainted)");
	if (r->flags & RF_ETEOF)
		fprintf(out, " (et-eof)");
	if (r->flags & RF_FILE)
		fprintf(out, " (file)");
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

/* The kinds of file at a slot's number. */
enum { FK_SOCK, FK_PIPE, FK_FILE, FK_UDP, FK_EVFD };

/* One px_io_add: the callback's arg.  A callback whose token px_io_del
 * killed is a callback for a removed registration. */
struct slot;
struct regtok {
	struct slot *s;
	int alive;
	struct regtok *next; /* every token of the run, for freeing */
};

#define NPOISON 8

struct slot {
	struct run *r;
	int idx;
	int kind;          /* FK_* of the file at a */
	int a_open, b_open;
	int fid;           /* the file at a (0: none) */
	int reg;           /* registered in this backend's loop */
	int preg;          /* registered as the program sees it: as reg, except that a
	                    * regular file px_io_add'ed counts (select/poll's view) */
	int tainted;       /* a closed or replaced while preg, until px_io_del */
	int filereg;       /* a regular file's registration (RF_FILE), until px_io_del */
	int npoison;       /* files closed under a registration that live on elsewhere */
	int poison[NPOISON];
	int err_iter;      /* epoll: the iteration that must bring a refused change's PX_ERR */
	int err_ok;        /* epoll: a PX_ERR callback may come (a change since the last) */
	int fchg_iter;     /* the file at a changed under the registration in this iteration */
	int touch_iter;    /* px_io_* or a new file for the slot in this iteration */
	int file_expect;   /* select/poll: an always ready regular file, armed: a callback due */
	int reg_iter;      /* registered from a callback in this iteration (-1: no) */
	int last_cb_iter;
	int pre_fid;       /* the file pre_rev is about */
	short pre_rev;     /* poll() of a just before the wait */
	int eteof_r;       /* an ET callback read the end of file */
	int eofcbs;        /* PX_READ callbacks since then (select/poll) */
	int spin_told;
	struct regtok *tok;
	unsigned mask;
	int rmode, wmode, act, actkind;
	unsigned actmask;
	uint32_t rn, wn;
	int eteof;
	int w_wait; /* a polled writable just before this iteration's wait */
	int fired;  /* a PX_ONESHOT callback ran since the last add/mod */
	unsigned fmask; /* effective mask at the last flush (before a wait) */
	uint32_t kset;  /* masks the kernel may hold now: fmask, and any mask set
	                 * since (a registration the kernel did not hold gets its
	                 * new mask at once, not at the flush) */
	int niot;
	int copy_fid[DO_NCOPY];
};

struct tinfo {
	struct run *r;
	int idx;
	int io;
	int64_t id;
	struct do_act sub;
};

#define IOT_PER_SLOT 64

struct child {
	pid_t pid;
	int ctl;        /* write a byte: the child exits */
	uint8_t *holds; /* holds[fid]: the child has a copy of that file */
	int nholds;
};

/* many: one extra fd */
struct mfd {
	struct run *r;
	int j;
	uint8_t alive, pending, consume, ready0;
	int last_iter, calls;
};

/* many: the fd whose change the kernel refuses */
struct xfd {
	struct run *r;
	int alive, calls, errs, last_iter, first_iter;
};

#define MAXFLIGHT 64

struct run {
	px_loop *loop;
	struct do_trace *t;
	int epoll;
	struct slot s[DO_NSLOTS];
	struct tinfo tm[DO_MAXTIMERS];
	int ntm;
	struct tinfo iot[DO_NSLOTS][IOT_PER_SLOT];
	int iter;
	int op;
	int in_io;
	int in_run;
	int setup_err;
	/* files: who holds a copy */
	int nfid, capfid;
	int *prefs;    /* fds of this process (slot ends, copies) */
	int *inflight; /* copies in flight over SCM_RIGHTS */
	struct child ch[DO_MAXCHILD];
	int nch;
	int courier;
	int flight[MAXFLIGHT];
	int nflight;
	struct regtok *toks;
	/* many */
	int many_done;
	long many_cbs;
	unsigned many_viol;
	struct mfd *mf;
	struct xfd x;
};

static uint8_t wbuf[65536];
static uint8_t rbuf[65536];

static int fd_a(int i) { return DO_FD_BASE + 2 * i; }
static int fd_b(int i) { return DO_FD_BASE + 2 * i + 1; }
static int fd_copy(int i, int k) { return DO_COPY_BASE + DO_NCOPY * i + k; }

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

static void viol(struct run *r, int code, int slot, int64_t detail)
{
	r->t->viol |= 1u << code;
	rec(r, R_ERR, 0, slot, code, detail);
}

/* ---- files and who holds them -------------------------------------------- */

static int fid_new(struct run *r)
{
	if (r->nfid >= r->capfid) {
		int cap = r->capfid ? r->capfid * 2 : 64;
		int *p = realloc(r->prefs, (size_t)cap * sizeof(int));
		if (!p)
			return 0;
		r->prefs = p;
		int *q = realloc(r->inflight, (size_t)cap * sizeof(int));
		if (!q)
			return 0;
		r->inflight = q;
		memset(r->prefs + r->capfid, 0, (size_t)(cap - r->capfid) * sizeof(int));
		memset(r->inflight + r->capfid, 0, (size_t)(cap - r->capfid) * sizeof(int));
		r->capfid = cap;
	}
	return r->nfid++;
}

/* Open references to file f: fds of this process, copies in flight,
 * children that were forked while it was open. */
static int fid_refs(const struct run *r, int f)
{
	if (f <= 0)
		return 0;
	int n = r->prefs[f] + r->inflight[f];
	for (int c = 0; c < r->nch; c++)
		if (f < r->ch[c].nholds && r->ch[c].holds[f])
			n++;
	return n;
}

/* Still poisoned: one of the files closed under a registration lives on. */
static int slot_poisoned(struct run *r, struct slot *s)
{
	int k = 0;
	for (int i = 0; i < s->npoison; i++)
		if (s->poison[i] < 0 || fid_refs(r, s->poison[i]) > 0)
			s->poison[k++] = s->poison[i];
	s->npoison = k;
	return k > 0;
}

/* The file at a's number goes away (close, or replaced by dup2).  Under a
 * registration that taints the slot (not for refuse, whose outcome the
 * contract defines), and while another copy keeps the file open epoll keeps
 * the registration: the number is poisoned (rule 4). */
static void a_gone(struct run *r, struct slot *s, int taint)
{
	if (!s->a_open)
		return;
	r->prefs[s->fid]--;
	s->err_iter = -1; /* a refused change's file is gone: no telling now */
	s->touch_iter = r->in_run ? r->iter : -1;
	if (s->preg) {
		if (taint)
			s->tainted = 1;
		s->fchg_iter = r->in_run ? r->iter : -1;
		/* epoll never holds a regular file */
		if (s->kind != FK_FILE && fid_refs(r, s->fid) > 0) {
			if (s->npoison < NPOISON)
				s->poison[s->npoison++] = s->fid;
			else
				s->poison[NPOISON - 1] = -1; /* for good */
			s->tainted = 1;
		}
	}
	s->a_open = 0;
	s->fid = 0;
}

static void a_close(struct run *r, struct slot *s)
{
	if (!s->a_open)
		return;
	a_gone(r, s, 1);
	close(fd_a(s->idx));
}

static void b_close(struct slot *s)
{
	if (s->b_open) {
		close(fd_b(s->idx));
		s->b_open = 0;
	}
}

static int open_tmpfile(void)
{
	const char *dir = getenv("TMPDIR");
	char path[512];
	int fd;

	if (!dir || !*dir)
		dir = "/tmp";
#ifdef O_TMPFILE
	fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd >= 0)
		return fd;
#endif
	snprintf(path, sizeof path, "%s/pollux-diff.XXXXXX", dir);
	fd = tp_mkstemp_cloexec(path);
	if (fd < 0)
		return -errno;
	unlink(path);
	return fd;
}

/* A UDP socket on 127.0.0.1 (sv[0]) and one connected to it (sv[1]); the
 * first is connected back, so it takes datagrams from its peer only. */
static int udp_pair(int sv[2], int queue)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	struct sockaddr_in aa, ba;
	socklen_t l;
	int e = 0;

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sv[0] = tp_socket(AF_INET, SOCK_DGRAM, 0, TP_NONBLOCK | TP_CLOEXEC);
	sv[1] = tp_socket(AF_INET, SOCK_DGRAM, 0, TP_NONBLOCK | TP_CLOEXEC);
	if (sv[0] < 0 || sv[1] < 0 || bind(sv[0], (struct sockaddr *)&sa, sizeof sa) != 0 ||
	    bind(sv[1], (struct sockaddr *)&sa, sizeof sa) != 0)
		goto fail;
	l = sizeof aa;
	if (getsockname(sv[0], (struct sockaddr *)&aa, &l) != 0)
		goto fail;
	l = sizeof ba;
	if (getsockname(sv[1], (struct sockaddr *)&ba, &l) != 0)
		goto fail;
	if (connect(sv[1], (struct sockaddr *)&aa, sizeof aa) != 0 ||
	    connect(sv[0], (struct sockaddr *)&ba, sizeof ba) != 0)
		goto fail;
	if (queue && send(sv[1], wbuf, 32, 0) != 32)
		goto fail;
	return 0;
fail:
	e = errno ? errno : EIO;
	if (sv[0] >= 0)
		close(sv[0]);
	if (sv[1] >= 0)
		close(sv[1]);
	return -e;
}

/* Puts a new file of kind k (DO_K_*) at a's number (and its peer, if it has
 * one, at b's): the old ones are replaced or closed. */
static int install(struct run *r, struct slot *s, int k, int taint)
{
	int sv[2] = { -1, -1 }, kind, rc = 0;

	switch (k) {
	case DO_K_SOCK:
		kind = FK_SOCK;
		if (tp_socketpair(AF_UNIX, SOCK_STREAM, 0, TP_NONBLOCK | TP_CLOEXEC, sv) != 0)
			return -errno;
		break;
	case DO_K_PIPE:
		kind = FK_PIPE;
		if (tp_pipe(sv, TP_NONBLOCK | TP_CLOEXEC) != 0)
			return -errno;
		break;
	case DO_K_FILE:
		kind = FK_FILE;
		if ((sv[0] = open_tmpfile()) < 0)
			return sv[0];
		break;
	case DO_K_UDP:
	case DO_K_UDPQ:
		kind = FK_UDP;
		if ((rc = udp_pair(sv, k == DO_K_UDPQ)) < 0)
			return rc;
		break;
	default:
#ifdef HAVE_SYS_EVENTFD_H
		kind = FK_EVFD;
		sv[0] = eventfd(k == DO_K_EVFDC ? 3 : 0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (sv[0] < 0)
			return -errno;
#else
		/* No eventfd here (Linux, FreeBSD 13+, NetBSD 10, illumos have it):
		 * the nearest kinds instead, a peerless-looking file with nothing
		 * to read (an empty pipe) or something to read (a queued datagram). */
		{
			static int said;
			if (!said++)
				printf("# diffops: no eventfd on this system: the reuse kinds eventfd and "
				       "eventfd+count install an empty pipe and a queued UDP pair\n");
		}
		if (k == DO_K_EVFDC) {
			kind = FK_UDP;
			if ((rc = udp_pair(sv, 1)) < 0)
				return rc;
		} else {
			kind = FK_PIPE;
			if (tp_pipe(sv, TP_NONBLOCK | TP_CLOEXEC) != 0)
				return -errno;
		}
#endif
		break;
	}
	int fid = fid_new(r);
	if (!fid) {
		close(sv[0]);
		if (sv[1] >= 0)
			close(sv[1]);
		return -ENOMEM;
	}
	a_gone(r, s, taint);
	s->touch_iter = r->in_run ? r->iter : -1;
	if (s->preg)
		s->fchg_iter = r->in_run ? r->iter : -1;
	if (tp_dup_to(sv[0], fd_a(s->idx), TP_CLOEXEC) < 0) {
		rc = -errno;
	} else {
		s->a_open = 1;
		s->fid = fid;
		r->prefs[fid]++;
	}
	close(sv[0]);
	if (sv[1] >= 0) {
		if (rc == 0 && tp_dup_to(sv[1], fd_b(s->idx), TP_CLOEXEC) < 0)
			rc = -errno;
		else if (rc == 0)
			s->b_open = 1;
		close(sv[1]);
	} else {
		b_close(s);
	}
	s->kind = kind;
	s->eteof = s->eteof_r = s->eofcbs = 0;
	return rc;
}

/* ---- copies: dups, SCM_RIGHTS, children ---------------------------------- */

static int copy_put(struct run *r, struct slot *s, int k, int srcfd, int fid)
{
	if (tp_dup_to(srcfd, fd_copy(s->idx, k), TP_CLOEXEC) < 0)
		return -errno;
	if (s->copy_fid[k])
		r->prefs[s->copy_fid[k]]--; /* dup2 closed the copy that was there */
	s->copy_fid[k] = fid;
	r->prefs[fid]++;
	return 0;
}

static void copy_close(struct run *r, struct slot *s, int k)
{
	if (!s->copy_fid[k])
		return;
	close(fd_copy(s->idx, k));
	r->prefs[s->copy_fid[k]]--;
	s->copy_fid[k] = 0;
}

static int copy_free(const struct slot *s)
{
	for (int k = 0; k < DO_NCOPY; k++)
		if (!s->copy_fid[k])
			return k;
	return -1;
}

static int courier_open(struct run *r)
{
	if (r->courier)
		return 0;
	for (int i = 0; i < 2; i++) {
		int sv[2], rc = 0;
		if (tp_socketpair(AF_UNIX, SOCK_STREAM, 0, TP_NONBLOCK | TP_CLOEXEC, sv) != 0)
			return -errno;
		if (tp_dup_to(sv[0], DO_COURIER + 2 * i, TP_CLOEXEC) < 0 ||
		    tp_dup_to(sv[1], DO_COURIER + 2 * i + 1, TP_CLOEXEC) < 0)
			rc = -errno;
		close(sv[0]);
		close(sv[1]);
		if (rc < 0)
			return rc;
	}
	r->courier = 1;
	return 0;
}

static int send_fd(int sock, int fd)
{
	char byte = 'f';
	struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int))];
	} u;
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
	ssize_t k;

	memset(&u, 0, sizeof u);
	m.msg_control = u.buf;
	m.msg_controllen = sizeof u.buf;
	struct cmsghdr *c = CMSG_FIRSTHDR(&m);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof fd);
	do
		k = tp_sendmsg(sock, &m, MSG_DONTWAIT);
	while (k < 0 && errno == EINTR);
	return k == 1 ? 0 : k < 0 ? -errno : -EIO;
}

/* One message: its fd (close-on-exec), or -errno. */
static int recv_fd(int sock)
{
	char byte;
	struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int) * 8)];
	} u;
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
	ssize_t k;
	int fd = -EBADMSG;

	memset(&u, 0, sizeof u);
	m.msg_control = u.buf;
	m.msg_controllen = sizeof u.buf;
	do
		k = tp_recvmsg_cloexec(sock, &m, MSG_DONTWAIT);
	while (k < 0 && errno == EINTR);
	if (k < 0)
		return -errno;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < n; i++) {
			int x;
			memcpy(&x, CMSG_DATA(c) + i * sizeof(int), sizeof x);
			if (fd < 0)
				fd = x;
			else
				close(x);
		}
	}
	return fd;
}

/* A child holding a copy of every fd: it blocks reading a pipe and exits
 * when told (a byte), when the parent dies, or after 120 s at most. */
static int child_spawn(struct run *r)
{
	int p[2];

	if (tp_pipe(p, TP_CLOEXEC) != 0)
		return -errno;
	uint8_t *holds = calloc((size_t)r->nfid + 1, 1);
	if (!holds) {
		close(p[0]);
		close(p[1]);
		return -ENOMEM;
	}
	for (int f = 1; f < r->nfid; f++)
		holds[f] = r->prefs[f] > 0;
	static int atexit_done;
	if (!atexit_done && atexit(do_reap_children) == 0)
		atexit_done = 1; /* a process that exits normally leaves none */
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid < 0) {
		int e = errno;
		close(p[0]);
		close(p[1]);
		free(holds);
		return -e;
	}
	if (pid == 0) {
		char c;
		signal(SIGALRM, SIG_DFL); /* not libFuzzer's timeout handler */
#if defined(HAVE_SYS_PRCTL_H) && defined(PR_SET_PDEATHSIG)
		(void)prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif /* elsewhere: the alarm below, or the parent's byte or exit */
		if (getppid() != parent)
			_exit(0);
		alarm(120);
		close(p[1]);
		while (read(p[0], &c, 1) < 0 && errno == EINTR)
			;
		_exit(0);
	}
	close(p[0]);
	struct child *c = &r->ch[r->nch++];
	c->pid = pid;
	c->ctl = p[1];
	c->holds = holds;
	c->nholds = r->nfid;
	return 0;
}

/* Children told to exit at the end of a run, reaped later (waiting for each
 * at once costs a scheduling round each on a busy machine). */
static pid_t zombie[64];
static int nzombie;

static void zombies_reap(int block)
{
	int k = 0;
	for (int i = 0; i < nzombie; i++) {
		pid_t w;
		int st;
		do
			w = waitpid(zombie[i], &st, block ? 0 : WNOHANG);
		while (w < 0 && errno == EINTR);
		if (w == 0)
			zombie[k++] = zombie[i]; /* still exiting */
	}
	nzombie = k;
}

void do_reap_children(void)
{
	zombies_reap(1);
}

/* Tells child c to exit; it is reaped later (its files no longer matter). */
static void child_let_go(struct run *r, int c)
{
	struct child *ch = &r->ch[c];

	if (write(ch->ctl, "x", 1) < 0) {
		/* it is gone already */
	}
	close(ch->ctl);
	if (nzombie == (int)(sizeof zombie / sizeof zombie[0]))
		zombies_reap(1);
	zombie[nzombie++] = ch->pid;
	free(ch->holds);
	r->ch[c] = r->ch[--r->nch];
}

/* Tells child c to exit and reaps it (it exits at once; it cannot outlive
 * its alarm): the files it held are closed when this returns. */
static void child_end(struct run *r, int c)
{
	struct child *ch = &r->ch[c];
	int st;

	if (write(ch->ctl, "x", 1) < 0) {
		/* it is gone already: waitpid says so */
	}
	close(ch->ctl);
	while (waitpid(ch->pid, &st, 0) < 0 && errno == EINTR)
		;
	free(ch->holds);
	r->ch[c] = r->ch[--r->nch];
}

/* ---- byte transfers -------------------------------------------------------- */

enum { X_STREAM, X_PIPE, X_DGRAM, X_EVFD };

static int how_of(int kind)
{
	switch (kind) {
	case FK_SOCK:
		return X_STREAM;
	case FK_UDP:
		return X_DGRAM;
	case FK_EVFD:
		return X_EVFD;
	default:
		return X_PIPE;
	}
}

/* Trace value: bytes * 1000 + errno (0 for EAGAIN/EOF); eventfd: the value. */
static int64_t xwrite(int fd, int how, uint32_t n)
{
	int64_t total = 0;
	int err = 0;
	ssize_t k;

	if (how == X_EVFD) {
		uint64_t v = n ? n : 1;
		do
			k = write(fd, &v, sizeof v);
		while (k < 0 && errno == EINTR);
		return k == (ssize_t)sizeof v ? (int64_t)v * 1000 : k < 0 && errno != EAGAIN ? errno : 0;
	}
	if (how == X_DGRAM) {
		size_t want = n ? (n < 1024 ? n : 1024) : 64;
		do
			k = tp_send(fd, wbuf, want, MSG_DONTWAIT);
		while (k < 0 && errno == EINTR);
		return k >= 0 ? (int64_t)k * 1000 : errno == EAGAIN ? 0 : errno;
	}
	for (;;) {
		size_t want = sizeof(wbuf);
		if (n && (uint64_t)(n - total) < want)
			want = (size_t)(n - total);
		if (want == 0)
			break;
		k = how == X_STREAM ? tp_send(fd, wbuf, want, MSG_DONTWAIT)
		                    : write(fd, wbuf, want);
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
static int64_t xread(int fd, int how, uint32_t n, int *eof)
{
	int64_t total = 0;
	int err = 0, errs = 0;
	ssize_t k;

	if (how == X_EVFD) {
		uint64_t v;
		do
			k = read(fd, &v, sizeof v);
		while (k < 0 && errno == EINTR);
		return k == (ssize_t)sizeof v ? (int64_t)v * 1000 : k < 0 && errno != EAGAIN ? errno : 0;
	}
	for (;;) {
		size_t want = sizeof(rbuf);
		if (n && total >= n)
			break;
		/* a datagram is taken whole */
		if (n && how != X_DGRAM && (uint64_t)(n - total) < want)
			want = (size_t)(n - total);
		k = how == X_PIPE ? read(fd, rbuf, want) : recv(fd, rbuf, want, MSG_DONTWAIT);
		if (k > 0) {
			total += k;
			continue;
		}
		if (k == 0) {
			if (how == X_DGRAM) {
				if (++errs > 2)
					break;
				continue; /* an empty datagram (none are sent) */
			}
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

/* ---- the slot model ---------------------------------------------------------- */

static void io_cb(px_loop *loop, int fd, unsigned revents, void *arg);
static void timer_cb(px_loop *loop, int64_t id, void *arg);

static void slot_added(struct slot *s, unsigned mask)
{
	s->mask = s->fmask = mask;
	s->kset = 1u << (mask & 15);
	s->eteof = s->eteof_r = s->eofcbs = 0;
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
	s->kset |= 1u << (mask & 15);
	s->mask = mask;
	s->fired = 0;
}

/* What is asked of the kernel for this kind of file (rule 7). */
static unsigned fit_mask(const struct slot *s, unsigned m)
{
	if (m & ~PX_ALL_BITS)
		return m; /* invalid: -EINVAL everywhere */
	if (s->kind == FK_PIPE)
		m &= ~PX_WRITE;
	if ((s->kind == FK_UDP || s->kind == FK_EVFD) && (m & PX_ET))
		m &= ~PX_WRITE;
	return m;
}

static struct regtok *tok_new(struct run *r, struct slot *s)
{
	struct regtok *t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	t->s = s;
	t->next = r->toks;
	r->toks = t;
	return t;
}

static void op_add(struct run *r, struct slot *s, unsigned mask)
{
	int i = s->idx;

	if (!s->a_open) {
		/* px_io_add of a closed number: undefined (epoll -EBADF,
		 * select/poll accept it and report PX_ERR): not done. */
		rec(r, R_RC, RF_SKIP, i, DO_ADD, 0);
		return;
	}
	unsigned m = fit_mask(s, mask);
	struct regtok *tk = tok_new(r, s);
	if (!tk) {
		r->setup_err = -ENOMEM;
		return;
	}
	int was_reg = s->reg;
	int rc = px_io_add(r->loop, fd_a(i), m, io_cb, tk);
	s->touch_iter = r->in_run ? r->iter : -1;
	/* A regular file registered (select, poll: 0; epoll: -EPERM) */
	if (s->kind == FK_FILE && (rc == 0 || (r->epoll && rc == -EPERM)))
		s->filereg = 1;
	if (rc == 0) {
		tk->alive = 1;
		s->tok = tk;
		s->reg = s->preg = 1;
		/* A registration made while an old file at the number lives on
		 * in epoll's set is undefined until its px_io_del (rule 4). */
		s->tainted = slot_poisoned(r, s);
		slot_added(s, m);
		s->reg_iter = r->in_run ? r->iter : -1;
		s->err_iter = -1;
		s->err_ok = 0;
	}
	if (s->kind == FK_FILE && r->epoll && !(m & ~PX_ALL_BITS) && !was_reg) {
		/* Contract: -EPERM on epoll (a disarmed registration of one
		 * needs nothing of the kernel: 0 is fine then). */
		if (rc == -EPERM) {
			if (!s->preg) {
				s->preg = 1; /* what select and poll did */
				s->tainted = slot_poisoned(r, s);
				slot_added(s, m);
			}
		} else if (m & PX_RW_BITS) {
			viol(r, V_EPERM, i, rc);
		}
		if (rc == 0)
			s->err_ok = 1; /* the kernel refuses it at the flush */
	}
	rec(r, R_RC, s->filereg ? RF_FILE : 0, i, DO_ADD, rc);
}

/* The socket has a hang-up or an error pending (what poll/epoll report as
 * PX_HUP/PX_ERR and select cannot see). */
static int hung_up(int fd)
{
	return (tp_poll1(fd, POLLIN | TP_POLLRDHUP) & (POLLHUP | TP_POLLRDHUP | POLLERR)) != 0;
}

static void op_mod(struct run *r, struct slot *s, unsigned mask, int from_timer)
{
	int i = s->idx;
	int undefined = s->preg && (s->tainted || !s->a_open);

	if (from_timer && (do_relax & DO_RELAX_LATEHUP) && s->a_open && hung_up(fd_a(i))) {
		rec(r, R_RC, RF_SKIP, i, DO_MOD, 0);
		return;
	}
	unsigned m = fit_mask(s, mask);
	unsigned before = slot_effective(s);
	int rc = px_io_mod(r->loop, fd_a(i), m);
	if (rc == 0)
		slot_modded(s, m);
	s->err_iter = -1;
	s->touch_iter = r->in_run ? r->iter : -1;
	if (r->epoll && s->filereg && rc == 0 && (m & PX_RW_BITS) && m != before)
		s->err_ok = 1;
	rec(r, R_RC, (undefined ? RF_TAINT : 0) | (s->filereg ? RF_FILE : 0), i, DO_MOD, rc);
}

static void op_del(struct run *r, struct slot *s)
{
	unsigned fl = s->filereg ? RF_FILE : 0;
	int rc = px_io_del(r->loop, fd_a(s->idx));

	s->touch_iter = r->in_run ? r->iter : -1;
	if (rc == 0) {
		s->reg = 0;
		if (s->tok)
			s->tok->alive = 0;
		s->tok = NULL;
	}
	if (s->preg || rc == 0) {
		s->preg = s->tainted = s->filereg = 0;
		s->err_iter = -1;
		s->err_ok = 0;
	}
	rec(r, R_RC, fl, s->idx, DO_DEL, rc);
}

/* del, close, another kind of file, add */
static void reuse_slot(struct run *r, struct slot *s, int k, unsigned mask)
{
	op_del(r, s);
	a_close(r, s);
	b_close(s);
	int rc = install(r, s, k, 1);
	rec(r, R_RC, rc < 0 ? RF_TAINT : 0, s->idx, DO_REUSE, rc);
	if (rc < 0)
		return;
	op_add(r, s, mask);
}

/* A copy of a at copy number k (k < 0: the first free one). */
static void op_dup(struct run *r, struct slot *s, int k, int kind)
{
	if (!s->a_open || (k < 0 && (k = copy_free(s)) < 0)) {
		rec(r, R_RC, RF_SKIP, s->idx, kind, 0);
		return;
	}
	rec(r, R_RC, 0, s->idx, kind, copy_put(r, s, k, fd_a(s->idx), s->fid));
}

/* ---- callbacks ---------------------------------------------------------------- */

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

static short poll_now(int fd)
{
	return tp_poll1(fd, POLLIN | POLLOUT | TP_POLLRDHUP);
}

/* revents that the file's readiness (as poll() sees it) justifies.  The armed
 * directions come with any hang-up or error (contract); select reports a
 * hang-up as readiness (a pipe at EOF polls POLLHUP only). */
static int justified(unsigned rev, short have)
{
	unsigned bad = rev & (PX_HUP | PX_ERR);

	if ((rev & PX_READ) && !bad && !(have & (POLLIN | TP_POLLRDHUP | POLLHUP | POLLERR)))
		return 0;
	if ((rev & PX_WRITE) && !bad && !(have & (POLLOUT | POLLHUP | POLLERR)))
		return 0;
	if ((rev & PX_HUP) && !(have & (POLLHUP | TP_POLLRDHUP | POLLERR)))
		return 0;
	if ((rev & PX_ERR) && !(have & (POLLERR | POLLNVAL)))
		return 0;
	return 1;
}

/* The contract's invariants for one callback of a defined registration. */
static void check_cb(struct run *r, struct slot *s, int fd, unsigned revents)
{
	int i = s->idx;

	if (fd != fd_a(i)) {
		viol(r, V_FD, i, fd);
		return;
	}
	if (s->last_cb_iter == r->iter)
		viol(r, V_TWICE, i, revents);
	if (s->reg_iter == r->iter)
		viol(r, V_STALE, i, revents);
	unsigned eff = slot_effective(s);
	if (!(eff & PX_RW_BITS) || (revents & PX_RW_BITS & ~eff))
		viol(r, V_MASK, i, (int64_t)revents | (int64_t)eff << 8);
	if (r->epoll && s->filereg && s->kind == FK_FILE) {
		/* epoll cannot watch a regular file: the only callback is the
		 * PX_ERR of a refused change, once; then it is disarmed. */
		if (!(revents & PX_ERR) || !s->err_ok)
			viol(r, V_FILECB, i, revents);
		if (revents & PX_ERR) {
			if (s->err_iter == r->iter)
				s->err_iter = -1;
			s->err_ok = 0;
			s->mask &= ~PX_RW_BITS;
		}
		return;
	}
	short now = poll_now(fd);
	short have = (short)(now | (s->pre_fid == s->fid ? s->pre_rev : 0));
	if (!justified(revents, have))
		viol(r, V_STRAY, i,
		     (int64_t)revents | (int64_t)(uint16_t)s->pre_rev << 8 | (int64_t)(uint16_t)now << 24);
}

static void io_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	struct regtok *tk = arg;
	struct slot *s = tk->s;
	struct run *r = s->r;
	int was = r->in_io;

	(void)loop;
	r->in_io = 1;
	if (!tk->alive || tk != s->tok) {
		rec(r, R_IO, RF_NOCMP, s->idx, (int)s->mask, revents);
		viol(r, V_DEAD, s->idx, revents);
		r->in_io = was;
		return;
	}
	int undefined = s->tainted;
	rec(r, R_IO,
	    (undefined ? RF_TAINT : 0) | (s->eteof ? RF_ETEOF : 0) | (s->filereg ? RF_FILE : 0),
	    s->idx, (int)s->mask, revents);
	if (!undefined && s->fchg_iter != r->iter)
		check_cb(r, s, fd, revents);
	s->last_cb_iter = r->iter;
	unsigned m = s->mask;
	if (m & PX_ONESHOT) {
		s->fired = 1;
		s->fmask = slot_effective(s); /* re-arming is a change */
		if (s->err_iter > r->iter)
			s->err_iter = -1; /* disarmed before the flush: no change left */
	}
	/* select/poll: an ET read side at end of file is idle for good
	 * (header); select reports it once more. */
	if (!r->epoll && !undefined && (m & PX_ET) && s->eteof_r && (revents & PX_READ) &&
	    ++s->eofcbs > 3 && !s->spin_told) {
		s->spin_told = 1;
		viol(r, V_ETSPIN, s->idx, revents);
	}
	/* Callbacks that are not compared do nothing (and a regular file's,
	 * which only select and poll make, neither). */
	if (undefined || s->filereg || !s->a_open ||
	    ((do_relax & DO_RELAX_ETEOF) && s->eteof && (m & PX_ET))) {
		r->in_io = was;
		return;
	}
	int how = how_of(s->kind);
	if (revents & PX_READ) {
		int eof = 0;
		if (m & PX_ET)
			(void)xread(fd, how, 0, &eof);
		else if (s->rmode == DO_R_PARTIAL)
			(void)xread(fd, how, s->rn, &eof);
		else if (s->rmode != DO_R_NONE)
			(void)xread(fd, how, 0, &eof);
		if (eof && (m & PX_ET))
			s->eteof = s->eteof_r = 1;
	}
	/* With PX_HUP/PX_ERR, poll and epoll report every armed direction
	 * (contract) and select only the true readiness; and a PX_WRITE seen by
	 * the wait may be stale once a timer callback of the same iteration
	 * filled the socket.  A unix socket takes writes before it polls
	 * writable (POLLOUT needs 3/4 of sndbuf free), so writing on such a
	 * PX_WRITE would make the runs drift apart by design: the callback
	 * writes only when the socket polled writable just before the
	 * iteration's wait (what select saw) and still does.  Only socketpairs
	 * are written from callbacks. */
	if (revents & PX_WRITE) {
		struct pollfd pf = { .fd = fd, .events = POLLOUT };
		if (s->kind != FK_SOCK || !s->w_wait || poll(&pf, 1, 0) != 1 ||
		    !(pf.revents & POLLOUT))
			revents &= ~PX_WRITE;
	}
	if (revents & PX_WRITE) {
		if (m & PX_ET) {
			/* A write error (EPIPE, ECONNRESET) leaves the write side
			 * idle-writable for good: the end of the stream too. */
			if (xwrite(fd, X_STREAM, 0) % 1000 != 0)
				s->eteof = 1;
		} else if (s->wmode == DO_W_FILL)
			(void)xwrite(fd, X_STREAM, 0);
		else if (s->wmode == DO_W_SOME)
			(void)xwrite(fd, X_STREAM, s->wn);
	}
	int act = s->act;
	s->act = DO_A_NONE;
	switch (act) {
	case DO_A_DEL:
		op_del(r, s);
		break;
	case DO_A_MOD:
	case DO_A_MOD0:
		op_mod(r, s, act == DO_A_MOD ? s->actmask : 0, 0);
		break;
	case DO_A_READD:
	case DO_A_REOPEN:
	case DO_A_DELCLOSE:
		op_del(r, s);
		if (act == DO_A_DELCLOSE) {
			a_close(r, s);
			break;
		}
		if (act == DO_A_REOPEN)
			rec(r, R_RC, 0, s->idx, DO_REOPEN, install(r, s, DO_K_SOCK, 1));
		op_add(r, s, s->actmask);
		break;
	case DO_A_REUSE:
		reuse_slot(r, s, s->actkind, s->actmask);
		break;
	case DO_A_DUPREOPEN:
		/* The safe order, with the old file living on in a copy. */
		op_dup(r, s, copy_free(s) >= 0 ? -1 : 0, DO_DUP);
		op_del(r, s);
		a_close(r, s);
		rec(r, R_RC, 0, s->idx, DO_REOPEN, install(r, s, DO_K_SOCK, 1));
		op_add(r, s, s->actmask);
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

/* eventfd's count, without reading it (Linux's /proc; -1 elsewhere, the
 * same for every backend) */
static int64_t evfd_count(int fd)
{
	char path[64], buf[512];
	snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
	int f = open(path, O_RDONLY | O_CLOEXEC);
	if (f < 0)
		return -1;
	ssize_t n = read(f, buf, sizeof buf - 1);
	close(f);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	char *p = strstr(buf, "eventfd-count:");
	return p ? (int64_t)strtoull(p + 14, NULL, 16) : -1;
}

static void snapshot(struct run *r)
{
	for (int i = 0; i < DO_NSLOTS; i++) {
		struct slot *s = &r->s[i];
		int qa = 0, qb = 0;
		if (s->a_open) {
			if (s->kind == FK_EVFD)
				qa = (int)evfd_count(fd_a(i));
			else if (ioctl(fd_a(i), FIONREAD, &qa) != 0)
				qa = -1;
		}
		if (s->b_open && ioctl(fd_b(i), FIONREAD, &qb) != 0)
			qb = -1;
		int64_t v = ((int64_t)s->a_open << 62) | ((int64_t)s->b_open << 61) |
		            ((int64_t)(s->kind & 7) << 58) | ((int64_t)(qa & 0x0fffffff) << 30) |
		            (int64_t)(qb & 0x3fffffff);
		rec(r, R_SNAP, 0, i, 0, v);
	}
}

/* One PX_RUN_NOWAIT iteration. */
static void iterate(struct run *r)
{
	r->iter++;
	for (int j = 0; j < DO_NSLOTS; j++) {
		struct slot *sj = &r->s[j];
		if (sj->reg && slot_effective(sj) != sj->fmask) {
			sj->eteof = sj->eteof_r = sj->eofcbs = 0;
			sj->fmask = slot_effective(sj);
		}
		sj->kset = 1u << (sj->fmask & 15);
		/* A registration that lives through a poisoned wait stays
		 * undefined until px_io_del (its ET state, say, is epoll's own
		 * from then on), however soon the old file goes. */
		if (sj->preg && slot_poisoned(r, sj))
			sj->tainted = 1;
		/* What the wait will see (nothing changes readiness between). */
		sj->pre_fid = sj->a_open ? sj->fid : -1;
		sj->pre_rev = sj->a_open ? poll_now(fd_a(j)) : 0;
		sj->w_wait = sj->a_open && (sj->pre_rev & POLLOUT);
		/* select and poll report a regular file always ready (rule 9) */
		sj->file_expect = !r->epoll && sj->reg && sj->filereg && sj->kind == FK_FILE &&
		                  !sj->tainted && (slot_effective(sj) & PX_RW_BITS) &&
		                  !(sj->mask & PX_ET);
	}
	r->in_run = 1;
	int rc = px_loop_run(r->loop, PX_RUN_NOWAIT);
	r->in_run = 0;
	if (rc != 0)
		rec(r, R_RC, 0, 0, DO_RUN, rc);
	for (int j = 0; j < DO_NSLOTS; j++) {
		struct slot *sj = &r->s[j];
		if (sj->file_expect && sj->last_cb_iter != r->iter && sj->touch_iter != r->iter)
			viol(r, V_FILEQUIET, j, (int64_t)slot_effective(sj));
		if (sj->err_iter < 0 || sj->err_iter > r->iter)
			continue;
		if (sj->err_iter == r->iter && !sj->tainted)
			viol(r, V_NOERR, j, 0);
		sj->err_iter = -1;
	}
}

/* ---- refuse: a change the kernel refuses at the flush -------------------- */

static void op_refuse(struct run *r, struct slot *s, unsigned mask, int from_timer)
{
	int i = s->idx;

	/* From a timer, as for mod: not under a pending hang-up (rule 8) */
	if (!s->a_open || s->tainted || s->filereg || s->kind == FK_FILE ||
	    (from_timer && (do_relax & DO_RELAX_LATEHUP) && hung_up(fd_a(i)))) {
		rec(r, R_RC, RF_SKIP, i, DO_REFUSE, 0);
		return;
	}
	if (!s->preg) {
		op_add(r, s, PX_READ);
		if (!s->preg)
			return; /* could not register: the add's rc says why */
	}
	int fd = open_tmpfile();
	int fid = fd >= 0 ? fid_new(r) : 0;
	if (fd < 0 || !fid) {
		if (fd >= 0)
			close(fd);
		rec(r, R_RC, RF_TAINT, i, DO_REFUSE, fd < 0 ? fd : -ENOMEM);
		return;
	}
	/* Close the registered number and put a regular file there. */
	a_close(r, s);
	s->tainted = slot_poisoned(r, s); /* else defined: see rule 9 */
	int rc = tp_dup_to(fd, fd_a(i), TP_CLOEXEC) < 0 ? -errno : 0;
	close(fd);
	if (rc == 0) {
		s->a_open = 1;
		s->fid = fid;
		r->prefs[fid]++;
	}
	b_close(s);
	s->kind = FK_FILE;
	s->filereg = 1;
	s->eteof = s->eteof_r = s->eofcbs = 0;
	rec(r, R_RC, RF_FILE, i, DO_REFUSE, rc);
	if (rc < 0) {
		r->setup_err = rc;
		return;
	}
	/* Another mask, with a direction, that differs from the watcher's and
	 * from any the kernel may hold: a change the kernel must make (one that
	 * undoes a pending change makes none). */
	unsigned before = slot_effective(s), m = 0;
	for (unsigned k = 0; k < 16; k++) {
		m = (mask ^ k) & PX_ALL_BITS;
		if ((m & PX_RW_BITS) && m != before && !((s->kset >> m) & 1))
			break;
	}
	rc = px_io_mod(r->loop, fd_a(i), m);
	s->touch_iter = r->in_run ? r->iter : -1;
	if (rc == 0)
		slot_modded(s, m);
	if (r->epoll && rc == 0) {
		/* Deferred to the flush before the next wait, refused there:
		 * PX_ERR in that iteration (-EPERM now is fine too). */
		s->err_ok = 1;
		s->err_iter = r->iter + 1;
	}
	rec(r, R_RC, RF_FILE, i, DO_MOD, rc);
}

/* ---- many: thousands of ready fds --------------------------------------------- */

static void many_viol(struct run *r, int code, int64_t detail)
{
	if (r->many_viol & (1u << code))
		return; /* once per phase */
	r->many_viol |= 1u << code;
	viol(r, code, 255, detail);
}

static void many_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	struct mfd *m = arg;
	struct run *r = m->r;

	(void)loop;
	r->many_cbs++;
	if (!m->alive) {
		many_viol(r, V_MANY_DEAD, m->j);
		return;
	}
	if (fd != DO_MANY_BASE + 2 * m->j)
		many_viol(r, V_FD, fd);
	if (m->last_iter == r->iter)
		many_viol(r, V_MANY_TWICE, m->j);
	m->last_iter = r->iter;
	m->calls++;
	if (revents != PX_READ)
		many_viol(r, V_MANY_REV, (int64_t)m->j << 8 | revents);
	if (!m->pending) {
		many_viol(r, V_MANY_NOTREADY, m->j);
	} else if (m->consume) {
		char c;
		if (read(fd, &c, 1) == 1)
			m->pending = 0;
	}
}

static void x_cb(px_loop *loop, int fd, unsigned revents, void *arg)
{
	struct xfd *x = arg;
	struct run *r = x->r;

	(void)loop;
	(void)fd;
	if (!x->alive) {
		many_viol(r, V_MANY_DEAD, -1);
		return;
	}
	if (x->last_iter == r->iter)
		many_viol(r, V_MANY_TWICE, -1);
	x->last_iter = r->iter;
	x->calls++;
	if (r->epoll) {
		/* The refused change: PX_ERR once, in the iteration of its flush;
		 * then the watcher is disarmed. */
		if (!(revents & PX_ERR) || x->errs || r->iter != x->first_iter)
			many_viol(r, V_MANY_REFUSE, (int64_t)r->iter << 8 | revents);
		if (revents & PX_ERR)
			x->errs++;
	} else if (!(revents & PX_RW_BITS) || (revents & ~PX_RW_BITS)) {
		/* select/poll: a regular file, always ready */
		many_viol(r, V_MANY_REFUSE, revents);
	}
}

static int pair_at(int a, int b)
{
	int sv[2], rc = 0;

	if (tp_socketpair(AF_UNIX, SOCK_STREAM, 0, TP_NONBLOCK | TP_CLOEXEC, sv) != 0)
		return -errno;
	if (tp_dup_to(sv[0], a, TP_CLOEXEC) < 0 || tp_dup_to(sv[1], b, TP_CLOEXEC) < 0)
		rc = -errno;
	close(sv[0]);
	close(sv[1]);
	return rc;
}

/* The extra socketpairs are made once and kept for the life of the process
 * (making and closing thousands per run and backend would be most of the
 * tester's time); every phase leaves them empty and unregistered. */
static int pool_n;

static int pool_grow(int m)
{
	while (pool_n < m) {
		int rc = pair_at(DO_MANY_BASE + 2 * pool_n, DO_MANY_BASE + 2 * pool_n + 1);
		if (rc < 0)
			return rc;
		pool_n++;
	}
	return 0;
}

static void op_many(struct run *r, const struct do_act *a)
{
	struct many_shape h = many_shape(a->n);
	struct rlimit rl;
	int naddfail = 0, ndelfail = 0, nready = 0, created = 0, rc;
	int xa = DO_MANY_BASE - 2, xb = DO_MANY_BASE - 1, x_open = 0;

	if (r->many_done || r->in_run || getrlimit(RLIMIT_NOFILE, &rl) != 0 ||
	    rl.rlim_cur < (rlim_t)(DO_MANY_BASE + 2 * h.m + 64)) {
		rec(r, R_RC, RF_SKIP, 0, DO_MANY, 0);
		return;
	}
	struct mfd *mf = calloc((size_t)h.m, sizeof(*mf));
	if (!mf) {
		r->setup_err = -ENOMEM;
		return;
	}
	r->mf = mf; /* freed at the end of the run: a late callback finds it */
	r->many_done = 1;
	r->many_viol = 0;

	/* 1. An ordinary iteration: due timers (whose actions may arm slots)
	 * fire here, not among the thousands. */
	iterate(r);

	/* 2. The slots sit the phase out (rule 10). */
	unsigned saved[DO_NSLOTS];
	int disarmed[DO_NSLOTS] = { 0 };
	for (int i = 0; i < DO_NSLOTS; i++) {
		struct slot *s = &r->s[i];
		if (!s->preg)
			continue;
		int undefined = s->tainted || !s->a_open;
		saved[i] = slot_effective(s);
		rc = px_io_mod(r->loop, fd_a(i), 0);
		if (rc == 0) {
			slot_modded(s, 0);
			disarmed[i] = 1;
		}
		s->err_iter = -1;
		rec(r, R_RC, (undefined ? RF_TAINT : 0) | (s->filereg ? RF_FILE : 0), i, DO_MOD, rc);
	}

	/* 3. The extra fds, registered level-triggered, the ready ones with a
	 * byte each; and the fd whose change the kernel will refuse. */
	memset(&r->x, 0, sizeof r->x);
	r->x.r = r;
	r->x.last_iter = -1;
	if (h.refuse) {
		rc = pair_at(xa, xb);
		if (rc < 0)
			goto fail;
		x_open = 1;
		rc = px_io_add(r->loop, xa, PX_READ, x_cb, &r->x);
		if (rc == 0)
			r->x.alive = 1;
		else
			naddfail++;
	}
	if ((rc = pool_grow(h.m)) < 0)
		goto fail;
	for (int j = 0; j < h.m; j++) {
		created++;
		struct mfd *m = &mf[j];
		m->r = r;
		m->j = j;
		m->consume = h.consume && (j & 1);
		m->ready0 = j % h.q == 0;
		m->last_iter = -1;
		if (px_io_add(r->loop, DO_MANY_BASE + 2 * j, PX_READ, many_cb, m) == 0)
			m->alive = 1;
		else
			naddfail++;
	}
	for (int j = 0; j < h.m; j++) {
		if (!mf[j].ready0)
			continue;
		if (write(DO_MANY_BASE + 2 * j + 1, "m", 1) == 1)
			mf[j].pending = 1;
		nready++;
	}
	if (r->x.alive) {
		int f = open_tmpfile();
		if (f < 0) {
			rc = f;
			goto fail;
		}
		close(xa);
		rc = tp_dup_to(f, xa, TP_CLOEXEC) < 0 ? -errno : 0;
		close(f);
		if (rc < 0)
			goto fail;
		/* epoll: deferred to the flush, refused there */
		rc = px_io_mod(r->loop, xa, PX_READ | PX_WRITE);
		r->x.first_iter = r->iter + 1;
		rec(r, R_RC, 0, 0, DO_REFUSE, rc);
		nready++; /* select/poll: always ready */
	}

	/* 4. Enough iterations for every ready fd to be called. */
	int iters = (nready + 959) / 960 + 2;
	for (int k = 0; k < iters; k++) {
		r->many_cbs = 0;
		iterate(r);
		rec(r, R_MANY, RF_NOCMP, 0, 0, r->many_cbs);
	}
	int starved = 0, first = -1;
	for (int j = 0; j < h.m; j++)
		if (mf[j].ready0 && !mf[j].calls && starved++ == 0)
			first = j;
	if (starved)
		many_viol(r, V_MANY_STARVED, (int64_t)first << 16 | starved);
	if (r->x.alive) {
		if (r->epoll && r->x.errs != 1)
			many_viol(r, V_MANY_REFUSE, 0x10000 | r->x.errs);
		if (!r->epoll && !r->x.calls)
			many_viol(r, V_MANY_STARVED, -1);
	}
	rc = 0;
fail:
	/* 5. Gone again; the slots re-armed. */
	for (int j = 0; j < created; j++) {
		char c;
		if (mf[j].alive && px_io_del(r->loop, DO_MANY_BASE + 2 * j) != 0)
			ndelfail++;
		mf[j].alive = 0;
		if (mf[j].pending && read(DO_MANY_BASE + 2 * j, &c, 1) == 1)
			mf[j].pending = 0; /* empty for the next phase */
	}
	if (x_open) {
		if (r->x.alive && px_io_del(r->loop, xa) != 0)
			ndelfail++;
		r->x.alive = 0;
		close(xa);
		close(xb);
	}
	if (rc < 0) {
		r->setup_err = rc; /* out of fds, most likely: not the library's */
		return;
	}
	if (naddfail || ndelfail)
		many_viol(r, V_MANY_RC, (int64_t)ndelfail << 16 | naddfail);
	for (int i = 0; i < DO_NSLOTS; i++) {
		struct slot *s = &r->s[i];
		if (!disarmed[i])
			continue;
		int undefined = s->preg && (s->tainted || !s->a_open);
		rc = px_io_mod(r->loop, fd_a(i), saved[i]);
		if (rc == 0)
			slot_modded(s, saved[i]);
		rec(r, R_RC, (undefined ? RF_TAINT : 0) | (s->filereg ? RF_FILE : 0), i, DO_MOD, rc);
	}
	rec(r, R_MANY, 0, 0, 1,
	    (int64_t)h.m | (int64_t)nready << 16 | (int64_t)h.refuse << 32 |
	        (int64_t)h.consume << 33 | (int64_t)(naddfail > 0) << 34 |
	        (int64_t)(ndelfail > 0) << 35);
}

/* ---- operations ----------------------------------------------------------- */

static void exec_act(struct run *r, const struct do_act *a, struct tinfo *self)
{
	struct slot *s = &r->s[a->slot];
	int i = a->slot;
	int64_t v;
	int rc;

	switch (a->kind) {
	case DO_ADD:
		op_add(r, s, a->mask);
		break;
	case DO_MOD:
		op_mod(r, s, a->mask, self != NULL);
		break;
	case DO_DEL:
		op_del(r, s);
		break;
	case DO_PWRITE:
	case DO_PREAD:
	case DO_AWRITE:
	case DO_AREAD: {
		/* Each kind's peer, or none (rule 6, diffops.h) */
		int fd = -1, on_a = 0;
		switch (s->kind) {
		case FK_SOCK:
		case FK_UDP:
			on_a = a->kind == DO_AWRITE || a->kind == DO_AREAD;
			fd = on_a ? fd_a(i) : fd_b(i);
			break;
		case FK_PIPE:
			on_a = a->kind == DO_AREAD;
			fd = a->kind == DO_PWRITE ? fd_b(i) : on_a ? fd_a(i) : -1;
			break;
		case FK_EVFD:
			on_a = 1;
			fd = a->kind == DO_PWRITE || a->kind == DO_AREAD ? fd_a(i) : -1;
			break;
		default:
			break;
		}
		if (fd < 0 || !(on_a ? s->a_open : s->b_open)) {
			rec(r, R_RC, RF_SKIP, i, a->kind, 0);
			break;
		}
		if (a->kind == DO_PWRITE || a->kind == DO_AWRITE)
			v = xwrite(fd, how_of(s->kind), a->n);
		else
			v = xread(fd, how_of(s->kind), a->n, NULL);
		rec(r, R_RC, 0, i, a->kind, v);
		break;
	}
	case DO_SHUT:
		if (!s->b_open || (s->kind != FK_SOCK && s->kind != FK_PIPE)) {
			rec(r, R_RC, RF_SKIP, i, a->kind, 0);
			break;
		}
		if (s->kind == FK_PIPE) {
			b_close(s); /* the end of a pipe's stream */
			rc = 0;
		} else {
			rc = shutdown(fd_b(i), SHUT_WR) == 0 ? 0 : -errno;
		}
		rec(r, R_RC, 0, i, a->kind, rc);
		break;
	case DO_PCLOSE:
		if (!s->b_open) {
			rec(r, R_RC, RF_SKIP, i, a->kind, 0);
			break;
		}
		b_close(s);
		rec(r, R_RC, 0, i, a->kind, 0);
		break;
	case DO_ACLOSE:
		if (!s->a_open) {
			rec(r, R_RC, RF_SKIP, i, a->kind, 0);
			break;
		}
		a_close(r, s);
		rec(r, R_RC, 0, i, a->kind, 0);
		break;
	case DO_REOPEN:
		rc = install(r, s, DO_K_SOCK, 1);
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
		s->act = (a->mask >> 4) % DO_A_N;
		s->actmask = a->flags & 0x0f;
		s->actkind = (int)(((a->n - 1) / 8) % DO_K_N);
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
		if (ti->sub.kind == DO_MANY)
			ti->sub.kind = DO_NKINDS; /* not from a callback */
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
	case DO_DUP:
		op_dup(r, s, -1, DO_DUP);
		break;
	case DO_DUP2:
		op_dup(r, s, (int)(a->n % DO_NCOPY), DO_DUP2);
		break;
	case DO_DUPCLOSE: {
		int open[DO_NCOPY], n = 0;
		for (int k = 0; k < DO_NCOPY; k++)
			if (s->copy_fid[k])
				open[n++] = k;
		if (!n) {
			rec(r, R_RC, RF_SKIP, i, a->kind, 0);
			break;
		}
		copy_close(r, s, open[a->n % (unsigned)n]);
		rec(r, R_RC, 0, i, a->kind, 0);
		break;
	}
	case DO_FORK:
		if (a->flags ? r->nch == 0 : r->nch >= DO_MAXCHILD) {
			rec(r, R_RC, RF_SKIP, 0, a->kind, 0);
			break;
		}
		if (a->flags) {
			child_end(r, (int)(a->n % (unsigned)r->nch));
			rc = 0;
		} else {
			rc = child_spawn(r);
		}
		/* A failed fork (EAGAIN under load) is not the library's. */
		rec(r, R_RC, rc < 0 ? RF_TAINT : 0, 0, a->kind, rc);
		break;
	case DO_SCM:
		if (a->flags == 2) {
			/* Receive and close every copy in flight. */
			int n = 0;
			if (!r->nflight) {
				rec(r, R_RC, RF_SKIP, i, a->kind, 0);
				break;
			}
			while (r->nflight > 0) {
				int fd = recv_fd(DO_COURIER + 1);
				if (fd < 0) {
					n = fd;
					break;
				}
				close(fd);
				r->inflight[r->flight[0]]--;
				memmove(r->flight, r->flight + 1, (size_t)--r->nflight * sizeof(int));
				n++;
			}
			rec(r, R_RC, 0, i, a->kind, n);
			break;
		}
		if (!s->a_open || (a->flags == 1 && r->nflight >= MAXFLIGHT)) {
			rec(r, R_RC, RF_SKIP, i, a->kind, 0);
			break;
		}
		rc = courier_open(r);
		if (rc == 0)
			rc = send_fd(DO_COURIER + (a->flags == 1 ? 0 : 2), fd_a(i));
		if (rc == 0 && a->flags == 1) {
			r->flight[r->nflight++] = s->fid;
			r->inflight[s->fid]++;
		} else if (rc == 0) {
			int fd = recv_fd(DO_COURIER + 3);
			if (fd < 0) {
				rc = fd;
			} else {
				int k = copy_free(s);
				if (k >= 0)
					rc = copy_put(r, s, k, fd, s->fid);
				close(fd);
			}
		}
		rec(r, R_RC, 0, i, a->kind, rc);
		break;
	case DO_REUSE:
		reuse_slot(r, s, (int)(a->n % DO_K_N), a->mask);
		break;
	case DO_REFUSE:
		op_refuse(r, s, a->mask, self != NULL);
		break;
	case DO_MANY:
		op_many(r, a);
		break;
	default:
		break;
	}
}

int do_run(const struct do_prog *p, const char *backend, struct do_trace *t)
{
	static int rlimit_done;
	struct sigaction ign, oldpipe;
	struct run *r = calloc(1, sizeof(*r));
	int rc = 0;

	if (!r)
		return -ENOMEM;
	zombies_reap(0);
	if (!rlimit_done) {
		/* many needs thousands of fds */
		struct rlimit rl;
		rlimit_done = 1;
		if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
			rl.rlim_cur = rl.rlim_max;
			(void)setrlimit(RLIMIT_NOFILE, &rl);
		}
	}
	/* Writing to a pipe whose reader is gone: EPIPE, not a signal. */
	memset(&ign, 0, sizeof ign);
	ign.sa_handler = SIG_IGN;
	sigemptyset(&ign.sa_mask);
	sigaction(SIGPIPE, &ign, &oldpipe);
	memset(t, 0, sizeof(*t));
	t->backend = backend;
	r->t = t;
	r->nfid = 1; /* 0: no file */
	r->loop = px_loop_new_backend(backend);
	if (!r->loop) {
		rc = -errno;
		free(r);
		sigaction(SIGPIPE, &oldpipe, NULL);
		return rc;
	}
	r->epoll = strcmp(px_loop_backend(r->loop), "epoll") == 0;
	for (int i = 0; i < DO_NSLOTS; i++) {
		struct slot *s = &r->s[i];
		s->r = r;
		s->idx = i;
		s->reg_iter = s->err_iter = s->fchg_iter = s->last_cb_iter = s->touch_iter = -1;
		if ((rc = install(r, s, DO_K_SOCK, 0)) < 0)
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
	while (r->nch > 0)
		child_let_go(r, r->nch - 1);
	px_loop_free(r->loop);
	for (int i = 0; i < DO_NSLOTS; i++) {
		struct slot *s = &r->s[i];
		if (s->a_open)
			close(fd_a(i));
		if (s->b_open)
			close(fd_b(i));
		for (int k = 0; k < DO_NCOPY; k++)
			if (s->copy_fid[k])
				close(fd_copy(i, k));
	}
	if (r->courier)
		for (int k = 0; k < 4; k++)
			close(DO_COURIER + k);
	while (r->toks) {
		struct regtok *n = r->toks->next;
		free(r->toks);
		r->toks = n;
	}
	free(r->prefs);
	free(r->inflight);
	free(r->mf);
	free(r);
	sigaction(SIGPIPE, &oldpipe, NULL);
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

/* The canonical form: violations, informational records and tainted io
 * callbacks dropped (and RF_FILE records when comparing epoll with another
 * backend: rule 9), io sections sorted by slot, runs of io-created timer
 * firings sorted by index. */
static struct do_rec *canon(const struct do_trace *t, int *np, int drop_file)
{
	struct do_rec *v = malloc((size_t)(t->n ? t->n : 1) * sizeof(*v));
	int n = 0;

	if (!v)
		return NULL;
	for (int i = 0; i < t->n; i++) {
		const struct do_rec *x = &t->r[i];
		if (x->type == R_ERR || (x->flags & RF_NOCMP))
			continue;
		if (drop_file && (x->flags & RF_FILE))
			continue;
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

static int is_epoll(const struct do_trace *t)
{
	return strcmp(t->backend, "epoll") == 0;
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
	int drop_file = is_epoll(x) != is_epoll(y);
	struct do_rec *cx = canon(x, &nx, drop_file), *cy = canon(y, &ny, drop_file);
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

/* Describes the violations a run recorded: the first in context, then a
 * count of each kind. */
static void report_viol(const struct do_prog *p, const struct do_trace *t, FILE *out)
{
	int e = -1, count[V_N] = { 0 };

	for (int i = 0; i < t->n; i++)
		if (t->r[i].type == R_ERR) {
			if (e < 0)
				e = i;
			if (t->r[i].kind < V_N)
				count[t->r[i].kind]++;
		}
	if (e < 0)
		return;
	const struct do_rec *d = &t->r[e];
	fprintf(out, "contract violation on %s at op %d, iteration %d: %s (slot %d)\n", t->backend,
	        d->op, d->iter, do_viol_name(d->kind), d->slot);
	fprintf(out, "program up to op %d:\n", d->op);
	do_print_prog(p, 0, d->op + 1, out);
	fprintf(out, "%s (records %d..):\n", t->backend, e > 40 ? e - 40 : 0);
	for (int j = e > 40 ? e - 40 : 0; j < t->n && j < e + 8; j++) {
		fprintf(out, "%s", j == e ? "=>" : "  ");
		print_rec(&t->r[j], out);
	}
	fprintf(out, "violations on %s:", t->backend);
	for (int v = 1; v < V_N; v++)
		if (count[v])
			fprintf(out, " %s x%d", do_viol_name(v), count[v]);
	fprintf(out, "\n");
}

int do_check_all(const struct do_prog *p, FILE *out)
{
	const char *const *be = px_backends();
	struct do_trace t[8];
	int n = 0, bad = 0, rc;

	do_last_viol = 0;
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
	for (int k = 0; k < n; k++)
		if (t[k].viol & ~do_viol_ignore) {
			bad++;
			do_last_viol |= t[k].viol;
			if (out)
				report_viol(p, &t[k], out);
		}
	for (int a = 0; a < n; a++)
		for (int b = a + 1; b < n; b++)
			if (!do_compare(p, &t[a], &t[b], out)) {
				bad++;
				do_last_viol |= 1u;
			}
	for (int k = 0; k < n; k++)
		do_trace_free(&t[k]);
	return bad;
}
