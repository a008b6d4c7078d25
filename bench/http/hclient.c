/* hclient: sends exactly K requests over C concurrent connections to
 * 127.0.0.1:PORT and checks every answer byte for byte.
 *   hclient PORT K C keep|close
 * keep:  C keep-alive connections, requests spread over them (one outstanding
 *        request per connection).
 * close: each request on its own connection with "Connection: close"; the
 *        server must answer and close (EOF is awaited).
 * Exits 0 and prints "OK K" when all K answers were right. */
#include "hb_common.h"
#include <sys/epoll.h>

#define REQ_KEEP "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: hclient\r\n\r\n"
#define REQ_CLOSE "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: hclient\r\nConnection: close\r\n\r\n"

struct cc {
	int fd;
	size_t got;
	bool active;
	char buf[HB_RESPONSE_LEN + 64];
};

static int port, ep;
static long K, sent, done;
static bool close_mode;

static int dial(void)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		perror("hclient: connect");
		exit(2);
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
}

static void send_req(struct cc *c)
{
	const char *r = close_mode ? REQ_CLOSE : REQ_KEEP;
	size_t len = strlen(r);
	if (send(c->fd, r, len, MSG_NOSIGNAL) != (ssize_t)len) {
		perror("hclient: send");
		exit(2);
	}
	c->got = 0;
	c->active = true;
	sent++;
}

static void start(struct cc *c)
{
	if (close_mode || c->fd < 0) {
		c->fd = dial();
		struct epoll_event e = { .events = EPOLLIN, .data.ptr = c };
		epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &e);
	}
	send_req(c);
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: hclient PORT K C keep|close\n");
		return 64;
	}
	port = atoi(argv[1]);
	K = atol(argv[2]);
	int C = atoi(argv[3]);
	close_mode = !strcmp(argv[4], "close");
	signal(SIGPIPE, SIG_IGN);
	alarm(120);
	ep = epoll_create1(0);
	if (C > K)
		C = (int)K;
	struct cc *cs = calloc((size_t)(C > 0 ? C : 1), sizeof(*cs));
	for (int i = 0; i < C; i++) {
		cs[i].fd = -1;
		start(&cs[i]);
	}
	struct epoll_event evs[64];
	while (done < K) {
		int n = epoll_wait(ep, evs, 64, 10000);
		if (n <= 0) {
			fprintf(stderr, "hclient: stalled after %ld answers\n", done);
			return 3;
		}
		for (int i = 0; i < n; i++) {
			struct cc *c = evs[i].data.ptr;
			ssize_t r = recv(c->fd, c->buf + c->got, sizeof(c->buf) - c->got, 0);
			if (r < 0 && errno == EINTR)
				continue;
			if (c->active) {
				if (r <= 0) {
					fprintf(stderr, "hclient: connection lost before the answer (%zd)\n", r);
					return 3;
				}
				c->got += (size_t)r;
				if (c->got > HB_RESPONSE_LEN || memcmp(c->buf, HB_RESPONSE, c->got) != 0) {
					fprintf(stderr, "hclient: wrong answer\n");
					return 3;
				}
				if (c->got < HB_RESPONSE_LEN)
					continue;
				c->active = false;
				done++;
				if (!close_mode) {
					if (sent < K)
						send_req(c);
					continue;
				}
				/* close mode: wait for the server's EOF */
				continue;
			}
			/* close mode, answer complete: expect EOF */
			if (r != 0) {
				fprintf(stderr, "hclient: expected the server to close (%zd)\n", r);
				return 3;
			}
			epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
			close(c->fd);
			c->fd = -1;
			if (sent < K)
				start(c);
		}
	}
	/* close mode: let the last connections see their EOF before exiting */
	if (close_mode) {
		for (int i = 0; i < C; i++) {
			if (cs[i].fd < 0)
				continue;
			char b[16];
			struct timeval tv = { 5, 0 };
			setsockopt(cs[i].fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
			if (recv(cs[i].fd, b, sizeof(b), 0) != 0) {
				fprintf(stderr, "hclient: last connection not closed by the server\n");
				return 3;
			}
			close(cs[i].fd);
		}
	} else {
		for (int i = 0; i < C; i++)
			close(cs[i].fd);
	}
	printf("OK %ld\n", done);
	return 0;
}
