/* allocinj: see allocinj.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <config.h>
#include "allocinj.h"

#include <dlfcn.h>
#include <errno.h>
#if defined(HAVE_LINK_H) && defined(HAVE_DL_ITERATE_PHDR)
#define AI_PHDR 1
#include <link.h>
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The allocator functions run before a sanitizer's runtime is initialized
 * (ASan's own start-up calls malloc through ld.so): nothing they execute may
 * be instrumented. */
#if defined(__GNUC__) || defined(__clang__)
#define AI_RAW __attribute__((no_sanitize_address, no_sanitize("undefined")))
#else
#define AI_RAW
#endif

/* ---- where the callers live ------------------------------------------------ */

#define AI_MAXSEG 16

struct range {
	uintptr_t lo, hi;
};


struct object {
	struct range seg[AI_MAXSEG];
	int nseg;
};

static struct object lib_obj, cmocka_obj;
static bool lib_is_exe; /* the library is linked into the executable */
static bool inited;

#ifdef AI_PHDR
static void add_segments(struct object *o, const struct dl_phdr_info *info)
{
	for (int i = 0; i < info->dlpi_phnum && o->nseg < AI_MAXSEG; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		if (ph->p_type != PT_LOAD)
			continue;
		uintptr_t lo = (uintptr_t)info->dlpi_addr + ph->p_vaddr;
		o->seg[o->nseg++] = (struct range){ lo, lo + ph->p_memsz };
	}
}

AI_RAW static bool in_object(const struct object *o, uintptr_t a)
{
	for (int i = 0; i < o->nseg; i++)
		if (a >= o->seg[i].lo && a < o->seg[i].hi)
			return true;
	return false;
}

struct find {
	uintptr_t fn;
	int index;
};

static int find_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
	struct find *f = arg;
	struct object tmp = { .nseg = 0 };
	const char *name = info->dlpi_name ? info->dlpi_name : "";

	(void)size;
	add_segments(&tmp, info);
	if (in_object(&tmp, f->fn)) {
		lib_obj = tmp;
		lib_is_exe = f->index == 0; /* the first object is the program */
	}
	const char *base = strrchr(name, '/');
	base = base ? base + 1 : name;
	if (strncmp(base, "libcmocka", 9) == 0)
		cmocka_obj = tmp;
	f->index++;
	return 0;
}

void ai_init(const void *lib_fn)
{
	struct find f = { (uintptr_t)lib_fn, 0 };

	memset(&lib_obj, 0, sizeof lib_obj);
	memset(&cmocka_obj, 0, sizeof cmocka_obj);
	lib_is_exe = false;
	dl_iterate_phdr(find_cb, &f);
	if (lib_obj.nseg == 0)
		lib_is_exe = true; /* not found: count the whole window */
	inited = true;
}
#else
/* No dl_iterate_phdr (an ELF interface: not on macOS): the library's
 * segments cannot be told apart, so every allocation of the window counts,
 * as when the library is linked into the program (ai_strict() false). */
AI_RAW static bool in_object(const struct object *o, uintptr_t a)
{
	(void)o;
	(void)a;
	return false;
}

void ai_init(const void *lib_fn)
{
	(void)lib_fn;
	memset(&lib_obj, 0, sizeof lib_obj);
	memset(&cmocka_obj, 0, sizeof cmocka_obj);
	lib_is_exe = true;
	inited = true;
	printf("# allocinj: no dl_iterate_phdr here: allocations are not told apart by "
	       "caller (cmocka's count too)\n");
}
#endif


bool ai_strict(void)
{
	return inited && !lib_is_exe;
}

/* ---- state ----------------------------------------------------------------- */

#define AI_LOG 4096

static bool armed, fail_all;
static long n_counted, fail_at, n_faults, n_probe_faults;
static struct ai_site site_log[AI_LOG];
static struct ai_site fault_site;
static bool have_fault_site;

/* Tracked blocks: open addressing, linear probing, tombstones. */
#define AI_TAB (1u << 14)
#define TOMB ((void *)1)

struct tracked {
	void *p;
	struct ai_site site;
};

static struct tracked tab[AI_TAB];
static unsigned n_live, n_tomb;
static bool tab_dirty;

AI_RAW static unsigned slot_of(const void *p)
{
	uint64_t h = (uint64_t)(uintptr_t)p >> 4;
	h *= 0x9e3779b97f4a7c15ull;
	return (unsigned)(h >> 40) & (AI_TAB - 1);
}

AI_RAW static void tab_insert(void *p, const struct ai_site *s);

AI_RAW static void tab_rehash(void)
{
	static struct tracked old[AI_TAB];

	memcpy(old, tab, sizeof tab);
	memset(tab, 0, sizeof tab);
	n_live = n_tomb = 0;
	for (unsigned i = 0; i < AI_TAB; i++)
		if (old[i].p && old[i].p != TOMB)
			tab_insert(old[i].p, &old[i].site);
}

AI_RAW static void tab_insert(void *p, const struct ai_site *s)
{
	if (n_live + n_tomb >= AI_TAB / 2) {
		if (n_tomb > 0)
			tab_rehash();
		if (n_live >= AI_TAB / 2)
			return; /* full: stop tracking (a test would see leaks missing, not false ones) */
	}
	unsigned i = slot_of(p);
	while (tab[i].p && tab[i].p != TOMB)
		i = (i + 1) & (AI_TAB - 1);
	if (tab[i].p == TOMB)
		n_tomb--;
	tab[i].p = p;
	tab[i].site = *s;
	n_live++;
	tab_dirty = true;
}

/* Removes p; returns whether it was tracked (and its site). */
AI_RAW static bool tab_remove(void *p, struct ai_site *s)
{
	if (n_live == 0)
		return false;
	unsigned i = slot_of(p);
	while (tab[i].p) {
		if (tab[i].p == p) {
			if (s)
				*s = tab[i].site;
			tab[i].p = TOMB;
			n_live--;
			n_tomb++;
			return true;
		}
		i = (i + 1) & (AI_TAB - 1);
	}
	return false;
}

void ai_reset(void)
{
	armed = fail_all = false;
	n_counted = fail_at = n_faults = n_probe_faults = 0;
	have_fault_site = false;
	if (tab_dirty) {
		memset(tab, 0, sizeof tab);
		tab_dirty = false;
	}
	n_live = n_tomb = 0;
}

void ai_arm(void)
{
	armed = true;
}

void ai_disarm(void)
{
	armed = false;
}

void ai_fail_at(long n)
{
	fail_at = n;
}

void ai_fail_all(bool on)
{
	fail_all = on;
}

long ai_count(void)
{
	return n_counted;
}

long ai_faults(void)
{
	return n_faults;
}

long ai_probe_faults(void)
{
	return n_probe_faults;
}

bool ai_site(long k, struct ai_site *out)
{
	if (k < 1 || k > n_counted || k > AI_LOG)
		return false;
	*out = site_log[k - 1];
	return true;
}

bool ai_fault_site(struct ai_site *out)
{
	if (have_fault_site)
		*out = fault_site;
	return have_fault_site;
}

const char *ai_kind_name(enum ai_kind k)
{
	return k == AI_MALLOC ? "malloc" : k == AI_CALLOC ? "calloc" : "realloc";
}

const char *ai_site_str(const struct ai_site *s, char *buf, size_t len)
{
	Dl_info di;
	const char *obj = "?";
	uintptr_t off = (uintptr_t)s->caller;

	if (dladdr(s->caller, &di) && di.dli_fname) {
		obj = strrchr(di.dli_fname, '/');
		obj = obj ? obj + 1 : di.dli_fname;
		off = (uintptr_t)s->caller - (uintptr_t)di.dli_fbase;
	}
	snprintf(buf, len, "%s(%zu) at %s+0x%lx", ai_kind_name(s->kind), s->size, obj,
	         (unsigned long)off);
	return buf;
}

long ai_live(void)
{
	return n_live;
}

const char *ai_live_str(char *buf, size_t len, int max)
{
	size_t used = 0;
	int n = 0;
	char one[160];

	buf[0] = '\0';
	for (unsigned i = 0; i < AI_TAB && n < max; i++) {
		if (!tab[i].p || tab[i].p == TOMB)
			continue;
		int w = snprintf(buf + used, len - used, "%s%s", n ? "; " : "",
		                 ai_site_str(&tab[i].site, one, sizeof one));
		if (w < 0 || (size_t)w >= len - used)
			break;
		used += (size_t)w;
		n++;
	}
	return buf;
}

/* ---- the decision ---------------------------------------------------------- */

enum verdict { PASS, PASS_COUNTED, FAIL };

AI_RAW static bool counts(const void *caller)
{
	uintptr_t a = (uintptr_t)caller;

	if (!armed || !inited)
		return false;
	if (!lib_is_exe)
		return in_object(&lib_obj, a);
	return !in_object(&cmocka_obj, a);
}

AI_RAW static enum verdict decide(enum ai_kind kind, size_t size, const void *caller,
                           struct ai_site *s)
{
	if (!counts(caller))
		return PASS;
	*s = (struct ai_site){ kind, size, caller };
	if (fail_all) {
		n_probe_faults++;
		return FAIL;
	}
	n_counted++;
	if (n_counted <= AI_LOG)
		site_log[n_counted - 1] = *s;
	if (n_counted == fail_at) {
		n_faults++;
		fault_site = *s;
		have_fault_site = true;
		return FAIL;
	}
	return PASS_COUNTED;
}

/* ---- the real functions ----------------------------------------------------- */

/* While dlsym runs (it may allocate), glibc's own functions serve; the few
 * blocks they hand out are remembered so that free returns them to glibc,
 * not to a sanitizer that never saw them.  Other C libraries have no such
 * entry points: there a static arena serves those few blocks (never freed;
 * realloc copies out of it). */
#ifdef __GLIBC__
extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t m);
extern void *__libc_realloc(void *p, size_t n);
extern void __libc_free(void *p);
#define early_malloc __libc_malloc
#define early_calloc __libc_calloc
#define early_realloc __libc_realloc
#define early_free __libc_free
#define in_arena(p) false
#else
static _Alignas(max_align_t) unsigned char arena[64 * 1024];
static size_t arena_used;

/* A block: its size in the max_align_t before it. */
AI_RAW static void *early_malloc(size_t n)
{
	size_t h = sizeof(max_align_t), need = h + ((n + h - 1) / h) * h;
	if (n > sizeof arena || need > sizeof arena - arena_used)
		return NULL;
	unsigned char *p = arena + arena_used;
	arena_used += need;
	memcpy(p, &n, sizeof n);
	return p + h;
}

AI_RAW static void *early_calloc(size_t n, size_t m)
{
	if (m && n > SIZE_MAX / m)
		return NULL;
	return early_malloc(n * m); /* the arena is zeroed and never reused */
}

AI_RAW static bool in_arena(const void *p)
{
	return (const unsigned char *)p >= arena && (const unsigned char *)p < arena + sizeof arena;
}

AI_RAW static void early_free(void *p)
{
	(void)p;
}

AI_RAW static void *early_realloc(void *p, size_t n)
{
	void *q = early_malloc(n);
	if (q && p) {
		size_t old;
		memcpy(&old, (unsigned char *)p - sizeof(max_align_t), sizeof old);
		memcpy(q, p, old < n ? old : n);
	}
	return q;
}
#endif

typedef void *malloc_fn(size_t);
typedef void *calloc_fn(size_t, size_t);
typedef void *realloc_fn(void *, size_t);
typedef void free_fn(void *);

static malloc_fn *real_malloc;
static calloc_fn *real_calloc;
static realloc_fn *real_realloc;
static free_fn *real_free;
static bool resolving;

#define AI_EARLY 16
static void *early[AI_EARLY];

AI_RAW static void *early_note(void *p)
{
	for (int i = 0; p && i < AI_EARLY; i++) {
		if (!early[i]) {
			early[i] = p;
			break;
		}
	}
	return p;
}

AI_RAW static bool early_take(void *p)
{
	for (int i = 0; i < AI_EARLY; i++) {
		if (early[i] == p) {
			early[i] = NULL;
			return true;
		}
	}
	return false;
}

AI_RAW static void resolve(void)
{
	if (real_free)
		return;
	resolving = true;
	real_malloc = (malloc_fn *)dlsym(RTLD_NEXT, "malloc");
	real_calloc = (calloc_fn *)dlsym(RTLD_NEXT, "calloc");
	real_realloc = (realloc_fn *)dlsym(RTLD_NEXT, "realloc");
	free_fn *f = (free_fn *)dlsym(RTLD_NEXT, "free");
	resolving = false;
	if (!real_malloc || !real_calloc || !real_realloc || !f)
		abort();
	real_free = f;
}

/* faultinj.c's FI_REALLOC plan, when that module is linked in. */
extern bool fi_realloc_fault(size_t n) __attribute__((weak));

/* ai_active's probe: the next call of one of ours fails and clears it. */
static bool probe;

bool ai_active(void)
{
	void *(*volatile m)(size_t) = malloc;
	void *(*volatile c)(size_t, size_t) = calloc;
	void *(*volatile r)(void *, size_t) = realloc;
	bool active = true;

	void *keep = m(16);
	if (!keep)
		return false;
	probe = true;
	void *p = m(16);
	active = active && !probe && !p;
	free(p);
	probe = true;
	p = c(1, 16);
	active = active && !probe && !p;
	free(p);
	probe = true;
	p = r(keep, 4096);
	active = active && !probe && !p;
	probe = false;
	free(p ? p : keep);
	return active;
}

/* ---- the wrappers ----------------------------------------------------------- */

AI_RAW void *malloc(size_t n)
{
	const void *caller = __builtin_return_address(0);
	struct ai_site s;

	if (resolving)
		return early_note(early_malloc(n));
	resolve();
	if (probe) {
		probe = false;
		errno = ENOMEM;
		return NULL;
	}
	enum verdict v = decide(AI_MALLOC, n, caller, &s);
	if (v == FAIL) {
		errno = ENOMEM;
		return NULL;
	}
	void *p = real_malloc(n);
	if (p && v == PASS_COUNTED)
		tab_insert(p, &s);
	return p;
}

AI_RAW void *calloc(size_t n, size_t m)
{
	const void *caller = __builtin_return_address(0);
	struct ai_site s;

	if (resolving)
		return early_note(early_calloc(n, m));
	resolve();
	if (probe) {
		probe = false;
		errno = ENOMEM;
		return NULL;
	}
	size_t total = m && n > SIZE_MAX / m ? SIZE_MAX : n * m;
	enum verdict v = decide(AI_CALLOC, total, caller, &s);
	if (v == FAIL) {
		errno = ENOMEM;
		return NULL;
	}
	void *p = real_calloc(n, m);
	if (p && v == PASS_COUNTED)
		tab_insert(p, &s);
	return p;
}

AI_RAW void *realloc(void *p, size_t n)
{
	const void *caller = __builtin_return_address(0);
	struct ai_site s, old;

	if (resolving)
		return early_realloc(p, n);
	resolve();
	if (probe) {
		probe = false;
		errno = ENOMEM;
		return NULL;
	}
	if (fi_realloc_fault && fi_realloc_fault(n)) {
		errno = ENOMEM;
		return NULL;
	}
	enum verdict v = decide(AI_REALLOC, n, caller, &s);
	if (v == FAIL) {
		errno = ENOMEM;
		return NULL;
	}
	if (p && early_take(p)) {
		/* A block glibc handed out while dlsym ran stays glibc's. */
		void *q = early_realloc(p, n);
		if (q || n)
			early_note(q ? q : p);
		return q;
	}
	bool was = p && tab_remove(p, &old);
	void *q = real_realloc(p, n);
	if (!q && n) {
		if (was)
			tab_insert(p, &old); /* still allocated */
		return NULL;
	}
	if (q && (v == PASS_COUNTED || was))
		tab_insert(q, v == PASS_COUNTED ? &s : &old);
	return q;
}

AI_RAW void free(void *p)
{
	if (!p)
		return;
	if (resolving || early_take(p) || in_arena(p)) {
		early_free(p);
		return;
	}
	resolve();
	tab_remove(p, NULL);
	real_free(p);
}
