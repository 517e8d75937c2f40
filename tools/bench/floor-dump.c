// The floor of tools/bench/src/floor.rs in C, for scripts that time whole processes
// (snapshot-ab.py): one raw sock_diag socket, one legacy TCPDIAG_GETSOCK dump for
// AF_UNSPEC with states 1-12, of each message only the state byte. Prints the socket
// count and the median CPU (user + system) of RUNS dumps, in ms.
//
//   gcc -O2 -o floor-dump floor-dump.c && ./floor-dump [RUNS]
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define TCPDIAG_GETSOCK 18
#define MAX_RUNS 64

static double cpu_seconds(void)
{
	struct rusage u;
	getrusage(RUSAGE_SELF, &u);
	return u.ru_utime.tv_sec + u.ru_stime.tv_sec +
	       (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

static long dump(void)
{
	static char buf[65536];
	struct {
		struct nlmsghdr h;
		struct inet_diag_req r;
	} req;
	long sockets = 0;
	int size = 1 << 20, done = 0;
	int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_INET_DIAG);

	if (fd < 0) {
		perror("socket");
		exit(1);
	}
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
	memset(&req, 0, sizeof(req));
	req.h.nlmsg_len = sizeof(req);
	req.h.nlmsg_type = TCPDIAG_GETSOCK;
	req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	req.h.nlmsg_seq = 1;
	req.r.idiag_family = AF_UNSPEC;
	req.r.idiag_states = 0x1ffe; // 1-12: not TCP_BOUND_INACTIVE (walks the bind hash)
	if (send(fd, &req, sizeof(req), 0) < 0) {
		perror("send");
		exit(1);
	}
	while (!done) {
		int len = recv(fd, buf, sizeof(buf), 0);
		if (len <= 0)
			break;
		for (struct nlmsghdr *h = (void *)buf; NLMSG_OK(h, len); h = NLMSG_NEXT(h, len)) {
			if (h->nlmsg_type == NLMSG_DONE || h->nlmsg_type == NLMSG_ERROR) {
				done = 1;
				break;
			}
			sockets += ((struct inet_diag_msg *)NLMSG_DATA(h))->idiag_state < 16;
		}
	}
	close(fd);
	return sockets;
}

int main(int argc, char **argv)
{
	int runs = argc > 1 ? atoi(argv[1]) : 5;
	double times[MAX_RUNS];
	long sockets = 0;

	if (runs < 1 || runs > MAX_RUNS) {
		fprintf(stderr, "floor-dump: RUNS must be 1-%d\n", MAX_RUNS);
		return 2;
	}
	for (int r = 0; r < runs; r++) {
		double start = cpu_seconds();
		sockets = dump();
		times[r] = cpu_seconds() - start;
	}
	for (int i = 0; i < runs; i++)
		for (int j = i + 1; j < runs; j++)
			if (times[j] < times[i]) {
				double t = times[i];
				times[i] = times[j];
				times[j] = t;
			}
	printf("%ld sockets, median CPU %.2f ms\n", sockets, times[runs / 2] * 1e3);
	return 0;
}
