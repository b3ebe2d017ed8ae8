/*
 * lab-timer: run a command, time it from spawn to the first output line
 * containing a marker ("vmm-guest:" by default) and to its exit.
 *
 *   lab-timer [-k] [-m MARKER] [-o LOGFILE] [-t TIMEOUT_S] [-K MARKER] [-w DIR]
 *             [-x CMD] -- COMMAND [ARGS...]
 *
 * The command's stdout and stderr go (merged) to LOGFILE (default: dropped),
 * its stdin is /dev/null.  On exit prints one line:
 *
 *   lab-timer: init_ms=<ms|-1> exit_ms=<ms> status=<code>
 *
 * status is the exit code, 128+N for death by signal N, and 124 if the
 * command was killed after TIMEOUT_S.  With -k (for a VMM that cannot power
 * its guest off, such as Firecracker) the command is killed (SIGKILL) as soon
 * as the marker shows; status is then 0, exit_ms the time it was reaped, and
 * the line ends with " stopped=1".
 *
 * -K MARKER is -k with its own marker: the command is killed when MARKER shows
 * (after the -m marker has been timed).
 *
 * -w DIR watches DIR with inotify and adds " create_ms=<ms|-1>": when the first
 * entry was created in it after the spawn (tools/boot-timeline watches the
 * outer kernel's /sys/kernel/debug/kvm, where KVM_CREATE_VM makes one).  -x CMD
 * runs `sh -c CMD` once, when the marker shows, and waits for it (to read the
 * KVM counters of a VM that is still alive).  Built by tools/bench-boot with
 * `gcc -static -O2` (busybox `date` has no nanoseconds).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

int main(int argc, char **argv)
{
	const char *marker = "vmm-guest:", *logfile = NULL, *watch = NULL, *at_marker = NULL,
		   *kill_marker = NULL;
	double timeout_ms = 0;
	int opt, stop_at_marker = 0;

	while ((opt = getopt(argc, argv, "+kK:m:o:t:w:x:")) != -1) {
		switch (opt) {
		case 'k': stop_at_marker = 1; break;
		case 'K': stop_at_marker = 1; kill_marker = optarg; break;
		case 'm': marker = optarg; break;
		case 'o': logfile = optarg; break;
		case 't': timeout_ms = atof(optarg) * 1e3; break;
		case 'w': watch = optarg; break;
		case 'x': at_marker = optarg; break;
		default:
			fprintf(stderr, "usage: lab-timer [-k] [-m MARKER] [-o LOG] [-t S] [-K MARKER] [-w DIR] [-x CMD] -- CMD...\n");
			return 2;
		}
	}
	if (optind >= argc) {
		fprintf(stderr, "lab-timer: no command\n");
		return 2;
	}
	int logfd = logfile ? open(logfile, O_WRONLY | O_CREAT | O_TRUNC, 0644) : -1;
	int p[2];
	if (pipe(p) < 0) {
		perror("pipe");
		return 2;
	}
	int ino = -1;
	if (watch) {
		ino = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
		if (ino < 0 || inotify_add_watch(ino, watch, IN_CREATE) < 0) {
			fprintf(stderr, "lab-timer: inotify on %s: %s\n", watch, strerror(errno));
			return 2;
		}
	}
	double t_create = -1;
	double t0 = now_ms();
	pid_t pid = fork();
	if (pid < 0) {
		perror("fork");
		return 2;
	}
	if (pid == 0) {
		int nul = open("/dev/null", O_RDONLY);
		dup2(nul, 0);
		dup2(p[1], 1);
		dup2(p[1], 2);
		close(p[0]);
		close(p[1]);
		execvp(argv[optind], argv + optind);
		fprintf(stderr, "lab-timer: exec %s: %s\n", argv[optind], strerror(errno));
		_exit(127);
	}
	close(p[1]);

	size_t mlen = strlen(marker);
	if (!kill_marker)
		kill_marker = marker;
	size_t klen = strlen(kill_marker);
	char buf[65536 + 256];
	size_t carry = 0;	/* bytes kept from the previous read to match across reads */
	double t_init = -1;
	int killed = 0, stopped = 0;
	for (;;) {
		int wait = -1;
		if (timeout_ms > 0) {
			double left = t0 + timeout_ms - now_ms();
			if (left <= 0) {
				kill(pid, SIGKILL);
				killed = 1;
				break;
			}
			wait = (int)left + 1;
		}
		struct pollfd pfd[2] = { { .fd = p[0], .events = POLLIN },
					 { .fd = ino, .events = POLLIN } };
		int r = poll(pfd, ino >= 0 ? 2 : 1, wait);
		if (r < 0 && errno == EINTR)
			continue;
		if (r == 0)
			continue;
		if (ino >= 0 && (pfd[1].revents & POLLIN)) {
			t_create = now_ms() - t0;
			close(ino);
			ino = -1;
		}
		if (!(pfd[0].revents & (POLLIN | POLLHUP | POLLERR)))
			continue;
		ssize_t n = read(p[0], buf + carry, 65536);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		if (logfd >= 0 && write(logfd, buf + carry, n) < 0)
			logfd = -1;
		size_t len = carry + n;
		if (t_init < 0 && memmem(buf, len, marker, mlen)) {
			t_init = now_ms() - t0;
			if (at_marker) {
				int rc = system(at_marker);
				(void)rc;
			}
		}
		if (t_init >= 0 && stop_at_marker && memmem(buf, len, kill_marker, klen)) {
			kill(pid, SIGKILL);
			stopped = 1;
			break;
		}
		size_t keep = (mlen > klen ? mlen : klen) - 1;
		carry = keep < len ? keep : len;
		if (carry > 255)
			carry = 255;
		memmove(buf, buf + len - carry, carry);
	}
	int st = 0;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	double t_exit = now_ms() - t0;
	int code = killed ? 124 : WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
	if (stopped && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL)
		code = 0;
	printf("lab-timer: init_ms=%.1f exit_ms=%.1f status=%d%s", t_init, t_exit, code,
	       stopped ? " stopped=1" : "");
	if (watch)
		printf(" create_ms=%.1f", t_create);
	printf("\n");
	return 0;
}
