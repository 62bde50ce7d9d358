// The native load client: the same command line and JSON output as
// bench/loadclient.mjs (fan-out, chat, --stalled, --hold, --sync, --proto
// socketio), on one thread with epoll and non-blocking sockets; frames are
// parsed in place in one shared read buffer, only a partial frame is copied.
// The Node client tops out near 2-4 M frames/s, below what the fastest servers
// send; this one reads several times faster, so the servers are the limit.
//
//   cc -O2 -o bench/build/loadclient bench/loadclient.c   (bench/native.py does it)
//   bench/build/loadclient --url ws://127.0.0.1:8000/ws --clients 1000 --k 200
//
// See bench/loadclient.mjs for what each option means. Loopback (IPv4) only.
// --deflate 1 offers permessage-deflate and inflates (zlib, hence -lz) each
// frame with RSV1 set on its own: the servers must agree to no context
// takeover (the upgrade is refused otherwise).
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#define READ_CHUNK (256 * 1024)
#define STDIN_TAG UINT32_MAX

typedef struct {
  struct sockaddr_in addr;
  char host[128];  // host:port, for the Host and Origin headers
  char path[512];
} Url;

enum { CONNECTING, HANDSHAKE, OPEN, CLOSED };

typedef struct {
  int fd;
  int state;
  int ready;    // handshake done (socketio: namespace joined)
  int stalled;  // never read after the handshake
  unsigned url;
  char *carry;  // unparsed bytes: a partial frame or header
  size_t carry_len, carry_cap;
  char *out;  // bytes the socket would not take yet
  size_t out_len, out_off, out_cap;
  int want_out;
} Conn;

static Url urls[64];
static unsigned n_urls;
static int socketio;
static Conn *conns;
static unsigned n_conns;
static int ep;
static char *rbuf;
static size_t rbuf_cap;
static long received;
static long target = -1;  // when `received` reaches it: the burst is over
static double last_at, first_at;  // the first counted frame: a late start shows
static long every = 1, skip_count;
static double *lat;
static long lat_cap, sampled;
static int sync_mode, done_said;
static uint64_t rng = 0x9E3779B97F4A7C15ull;
static int deflate_on;     // --deflate 1: offer permessage-deflate
static z_stream inflater;  // one for all: each message inflated on its own
static char *inflated;     // a message's inflated text
static size_t inflated_cap;
static long wire_bytes;    // bytes read off the sockets in the burst
static long compressed;    // frames of the burst that came compressed
// Messages inflated lately, by the crc32 of their compressed bytes.
#define SEEN_SLOTS 4096
typedef struct {
  char *z, *text;
  size_t z_len, z_cap, text_len, text_cap;
} Seen;
static Seen seen[SEEN_SLOTS];
static const char *body_text;  // --body: chat-like text carried by chat messages

static double now_ms(void) {  // epoch ms, as the servers stamp "t"
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static double cpu_ms(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
         (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
}

static void die(const char *what) {
  fprintf(stderr, "loadclient: %s: %s\n", what, strerror(errno));
  exit(2);
}

static void *grow(void *p, size_t *cap, size_t need) {
  if (need <= *cap) return p;
  size_t c = *cap ? *cap : 256;
  while (c < need) c *= 2;
  p = realloc(p, c);
  if (!p) die("realloc");
  *cap = c;
  return p;
}

// The burst is over: say so at once, so the caller reads the servers' CPU
// counters before anything else (percentiles, output) runs.
static void say_done(void) {
  if (sync_mode && !done_said) {
    done_said = 1;
    fputs("{\"phase\":\"done\"}\n", stdout);
    fflush(stdout);
  }
}

static void set_events(Conn *c, uint32_t events) {
  struct epoll_event ev = {.events = events, .data.u32 = (uint32_t)(c - conns)};
  // A stalled client is out of the epoll set for good: nothing to change.
  if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0 && errno != ENOENT) die("epoll_ctl");
}

static void flush_out(Conn *c) {
  while (c->out_off < c->out_len) {
    ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) break;
      c->state = CLOSED;
      return;
    }
    c->out_off += (size_t)n;
  }
  if (c->out_off == c->out_len) c->out_off = c->out_len = 0;
  int want = c->out_len > 0;
  if (want != c->want_out) {
    c->want_out = want;
    set_events(c, (c->stalled && c->ready ? 0 : EPOLLIN) | (want ? EPOLLOUT : 0));
  }
}

static void send_bytes(Conn *c, const char *data, size_t len) {
  if (c->out_len == 0) {  // nothing queued: straight to the socket
    ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
    if (n == (ssize_t)len) return;
    if (n < 0) {
      if (errno != EAGAIN && errno != EINTR) {
        c->state = CLOSED;
        return;
      }
      n = 0;
    }
    data += n;
    len -= (size_t)n;
  }
  c->out = grow(c->out, &c->out_cap, c->out_len + len);
  memcpy(c->out + c->out_len, data, len);
  c->out_len += len;
  flush_out(c);
}

// A client frame: masked, as RFC 6455 requires of clients.
static void send_frame(Conn *c, int opcode, const char *payload, size_t len) {
  char frame[16 + 16384];
  size_t head = 2;
  if (len > 16384) return;  // our frames are all small (a 1 KB body at most)
  frame[0] = (char)(0x80 | opcode);
  if (len < 126) {
    frame[1] = (char)(0x80 | len);
  } else {
    frame[1] = (char)(0x80 | 126);
    frame[2] = (char)(len >> 8);
    frame[3] = (char)(len & 255);
    head = 4;
  }
  rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
  uint8_t mask[4] = {(uint8_t)rng, (uint8_t)(rng >> 8), (uint8_t)(rng >> 16),
                     (uint8_t)(rng >> 24)};
  memcpy(frame + head, mask, 4);
  head += 4;
  for (size_t i = 0; i < len; i++) frame[head + i] = (char)(payload[i] ^ mask[i & 3]);
  send_bytes(c, frame, head + len);
}

// One event in the server's framing: our envelope or a Socket.IO event.
static void send_event(Conn *c, const char *type, const char *data) {
  char text[16384];
  int n = socketio ? snprintf(text, sizeof text, "42[\"%s\",%s]", type, data)
                   : snprintf(text, sizeof text, "{\"type\":\"%s\",\"data\":%s}", type, data);
  send_frame(c, 1, text, (size_t)n);
}

// The number after "t": in [p, end): digits, a point, an exponent.
static int parse_t(const char *p, const char *end, double *out) {
  static const char key[] = "\"t\":";
  const char *k = memmem(p, (size_t)(end - p), key, 4);
  if (!k) return 0;
  p = k + 4;
  char num[40];
  size_t n = 0;
  while (p < end && n < sizeof num - 1 && *p != ',' && *p != '}' && *p != ']') num[n++] = *p++;
  num[n] = 0;
  char *stop;
  *out = strtod(num, &stop);
  return stop != num;
}

// A text frame the server sent: counted; one in `every` sampled for latency.
static void on_message(const char *p, size_t len, double at) {
  if (socketio && (len < 2 || p[0] != '4' || p[1] != '2')) return;  // events only
  if (received++ == 0) first_at = at;
  last_at = at;
  if (received == target) say_done();
  if (++skip_count < every) return;
  skip_count = 0;
  double t;
  if (parse_t(p, p + len, &t) && sampled < lat_cap) lat[sampled++] = at - t;
}

// A compressed message (RFC 7692): raw deflate without its 00 00 ff ff tail.
// The inflater is reset first: the server keeps no context between messages.
static int inflate_message(const char *p, size_t len, const char **out, size_t *out_len) {
  static const unsigned char tail[4] = {0, 0, 0xff, 0xff};
  if (inflateReset(&inflater) != Z_OK) return 0;
  size_t have = 0;
  for (int part = 0; part < 2; part++) {
    inflater.next_in = part ? (Bytef *)tail : (Bytef *)p;
    inflater.avail_in = part ? 4 : (uInt)len;
    for (int rounds = 0; inflater.avail_in > 0 && rounds < 64; rounds++) {
      inflated = grow(inflated, &inflated_cap, have + 4 * len + 4096);
      inflater.next_out = (Bytef *)inflated + have;
      inflater.avail_out = (uInt)(inflated_cap - have);
      int rc = inflate(&inflater, Z_SYNC_FLUSH);
      have = (size_t)((char *)inflater.next_out - inflated);
      if (rc != Z_OK && rc != Z_BUF_ERROR && rc != Z_STREAM_END) return 0;
    }
    if (inflater.avail_in) return 0;
  }
  *out = inflated;
  *out_len = have;
  return 1;
}

// The connections stand for as many machines, each inflating its own copy.
// Bytes inflated lately (a broadcast: a server sends the same compressed
// bytes to all) are looked up instead: one client inflating for 1000
// receivers would be the limit, not the server that compressed once.
static void on_frame(Conn *c, int opcode, int rsv1, const char *p, size_t len, double at) {
  if (rsv1) {
    if (!deflate_on) {
      fputs("loadclient: a compressed frame without --deflate\n", stderr);
      exit(2);
    }
    Seen *s = &seen[crc32(0, (const Bytef *)p, (uInt)len) % SEEN_SLOTS];
    if (!(s->z && len == s->z_len && memcmp(p, s->z, len) == 0)) {
      const char *text;
      size_t text_len;
      if (!inflate_message(p, len, &text, &text_len)) {
        fputs("loadclient: a compressed frame zlib could not inflate\n", stderr);
        exit(2);
      }
      s->z = grow(s->z, &s->z_cap, len ? len : 1);
      memcpy(s->z, p, len);
      s->z_len = len;
      s->text = grow(s->text, &s->text_cap, text_len ? text_len : 1);
      memcpy(s->text, text, text_len);
      s->text_len = text_len;
    }
    p = s->text;
    len = s->text_len;
    compressed++;
  }
  if (opcode == 9) {  // ping: pong with the same payload
    send_frame(c, 10, p, len);
    return;
  }
  if (opcode != 1) return;  // pongs, binary, close: not counted
  if (socketio && len > 0 && p[0] != '4') {
    // Engine.IO control: "0{...}" open: join the namespace; "2" ping: "3".
    if (p[0] == '0') send_frame(c, 1, "40", 2);
    else if (p[0] == '2') send_frame(c, 1, "3", 1);
    return;
  }
  if (socketio && len > 1 && p[1] == '0') {  // "40": in the namespace
    c->ready = 1;
    return;
  }
  on_message(p, len, at);
}

// Parse the frames in buf[0, len); returns how many bytes were consumed.
static size_t parse(Conn *c, const char *buf, size_t len, double at) {
  size_t pos = 0;
  if (c->state == HANDSHAKE) {
    const char *end = memmem(buf, len, "\r\n\r\n", 4);
    if (!end) return 0;
    if (len < 12 || !memmem(buf, 12, "101", 3)) {
      fprintf(stderr, "loadclient: no upgrade: %.*s\n", (int)(end - buf), buf);
      exit(2);
    }
    if (deflate_on) {  // we inflate each message on its own: say so or stop
      const char *ext = memmem(buf, (size_t)(end - buf), "server_no_context_takeover", 26);
      if (!ext) {
        fprintf(stderr, "loadclient: no server_no_context_takeover: %.*s\n", (int)(end - buf),
                buf);
        exit(2);
      }
    }
    c->state = OPEN;
    if (!socketio) c->ready = 1;
    pos = (size_t)(end - buf) + 4;
  }
  const uint8_t *b = (const uint8_t *)buf;
  while (len - pos >= 2) {
    int opcode = b[pos] & 0x0f;
    uint64_t plen = b[pos + 1] & 0x7f;
    size_t head = 2;
    if (plen == 126) {
      if (len - pos < 4) break;
      plen = (uint64_t)b[pos + 2] << 8 | b[pos + 3];
      head = 4;
    } else if (plen == 127) {
      if (len - pos < 10) break;
      plen = 0;
      for (int i = 0; i < 8; i++) plen = plen << 8 | b[pos + 2 + i];
      head = 10;
    }
    if (b[pos + 1] & 0x80) head += 4;  // servers do not mask; skip a key if one does
    if (len - pos < head + plen) break;
    on_frame(c, opcode, b[pos] & 0x40, buf + pos + head, (size_t)plen, at);
    pos += head + (size_t)plen;
  }
  return pos;
}

static void on_readable(Conn *c) {
  size_t have = c->carry_len;
  rbuf = grow(rbuf, &rbuf_cap, have + READ_CHUNK);
  memcpy(rbuf, c->carry, have);
  ssize_t n = recv(c->fd, rbuf + have, READ_CHUNK, 0);
  if (n <= 0) {
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    c->state = CLOSED;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    return;
  }
  double at = now_ms();  // once per chunk, as the Node client does
  wire_bytes += n;
  size_t len = have + (size_t)n;
  size_t pos = parse(c, rbuf, len, at);
  c->carry_len = len - pos;
  if (c->carry_len) {
    c->carry = grow(c->carry, &c->carry_cap, c->carry_len);
    memcpy(c->carry, rbuf + pos, c->carry_len);
  }
  if (c->stalled && c->ready) {  // stop reading: its buffers fill, then the server's
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
  }
}

static void on_writable(Conn *c) {
  if (c->state == CONNECTING) {
    int err = 0;
    socklen_t sl = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &sl);
    if (err) {
      errno = err;
      die("connect");
    }
    Url *u = &urls[c->url];
    char req[1024];
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %016llxAAAAAA==\r\n"
                     "Sec-WebSocket-Version: 13\r\nOrigin: http://%s\r\n%s\r\n",
                     u->path, u->host, (unsigned long long)rng, u->host,
                     deflate_on ? "Sec-WebSocket-Extensions: permessage-deflate; "
                                  "client_max_window_bits\r\n"
                                : "");
    c->state = HANDSHAKE;
    c->want_out = 1;  // so that flush_out sets the events to read only
    send_bytes(c, req, (size_t)n);
    flush_out(c);
    return;
  }
  flush_out(c);
}

// Serve events until `until` (epoch ms) or until *stop becomes non-zero.
static int stdin_eof;
static void serve(double until, int (*stop)(void)) {
  struct epoll_event evs[1024];
  for (;;) {
    if (stop && stop()) return;
    double left = until - now_ms();
    if (left <= 0) return;
    int n = epoll_wait(ep, evs, 1024, left > 1000 ? 1000 : (int)left + 1);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("epoll_wait");
    }
    for (int i = 0; i < n; i++) {
      if (evs[i].data.u32 == STDIN_TAG) {
        char tmp[256];
        if (read(0, tmp, sizeof tmp) <= 0) {
          stdin_eof = 1;
          epoll_ctl(ep, EPOLL_CTL_DEL, 0, NULL);
        }
        continue;
      }
      Conn *c = &conns[evs[i].data.u32];
      if (c->state == CLOSED) continue;
      if (evs[i].events & (EPOLLOUT | EPOLLERR)) on_writable(c);
      if (c->state != CLOSED && evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c);
    }
  }
}

static unsigned batch_from, batch_to;
static int batch_ready(void) {
  for (unsigned i = batch_from; i < batch_to; i++) {
    if (conns[i].state == CLOSED) {
      fprintf(stderr, "loadclient: client %u closed while connecting\n", i);
      exit(2);
    }
    if (!conns[i].ready) return 0;
  }
  return 1;
}
static int all_received(void) { return target >= 0 && received >= target; }
static long warm_target;  // --warmup: frames of the unmeasured burst
static int warm_received(void) { return received >= warm_target; }
static int got_eof(void) { return stdin_eof; }

static void open_conn(unsigned i, int stalled) {
  Conn *c = &conns[i];
  memset(c, 0, sizeof *c);
  c->url = i % n_urls;
  c->stalled = stalled;
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  if (c->fd < 0) die("socket");
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(c->fd, (struct sockaddr *)&urls[c->url].addr, sizeof urls[c->url].addr) < 0 &&
      errno != EINPROGRESS)
    die("connect");
  c->state = CONNECTING;
  c->want_out = 1;
  struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.u32 = i};
  if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl");
}

// Open conns [from, to) in batches of 100: a listen backlog of 100 is common.
static void connect_all(unsigned from, unsigned to, int stalled) {
  for (unsigned i = from; i < to; i += 100) {
    batch_from = i;
    batch_to = i + 100 < to ? i + 100 : to;
    for (unsigned j = batch_from; j < batch_to; j++) open_conn(j, stalled);
    serve(now_ms() + 30000, batch_ready);
    if (!batch_ready()) {
      fprintf(stderr, "loadclient: connections %u-%u not open after 30 s\n", batch_from, batch_to);
      exit(2);
    }
  }
}

static void parse_url(const char *s, Url *u) {
  const char *p = strncmp(s, "ws://", 5) == 0 ? s + 5 : s;
  const char *slash = strchr(p, '/');
  size_t hl = slash ? (size_t)(slash - p) : strlen(p);
  if (hl >= sizeof u->host) hl = sizeof u->host - 1;
  memcpy(u->host, p, hl);
  u->host[hl] = 0;
  snprintf(u->path, sizeof u->path, "%s", slash ? slash : "/");
  char name[128];
  snprintf(name, sizeof name, "%s", u->host);
  char *colon = strrchr(name, ':');
  int port = 80;
  if (colon) {
    *colon = 0;
    port = atoi(colon + 1);
  }
  if (strcmp(name, "localhost") == 0) snprintf(name, sizeof name, "127.0.0.1");
  u->addr.sin_family = AF_INET;
  u->addr.sin_port = htons((uint16_t)port);
  if (inet_pton(AF_INET, name, &u->addr.sin_addr) != 1) {
    fprintf(stderr, "loadclient: not an IPv4 address: %s\n", name);
    exit(2);
  }
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static void pct(char *out, size_t size, double p) {
  if (!sampled) {
    snprintf(out, size, "null");
    return;
  }
  long i = (long)(sampled * p);
  snprintf(out, size, "%.6f", lat[i < sampled - 1 ? i : sampled - 1]);
}

// --sync: say we are about to start, and start when a line arrives on stdin.
// The caller reads the servers' CPU counters in between, so they cover only
// the measured burst.
static void wait_go(void) {
  if (!sync_mode) return;
  fputs("{\"phase\":\"ready\"}\n", stdout);
  fflush(stdout);
  char line[64];
  if (!fgets(line, sizeof line, stdin)) exit(2);
}

int main(int argc, char **argv) {
  const char *url_arg = "ws://127.0.0.1:8000/ws";
  long clients = 100, k = 100, stalled = 0, samples = -1;
  double timeout = 60, rate = -1, duration = 3;
  long warmup = 0;
  int hold = 0;
  for (int i = 1; i + 1 < argc; i++) {
    const char *a = argv[i], *v = argv[i + 1];
    if (strncmp(a, "--", 2) != 0) continue;
    a += 2;
    if (!strcmp(a, "url")) url_arg = v;
    else if (!strcmp(a, "proto")) socketio = !strcmp(v, "socketio");
    else if (!strcmp(a, "clients")) clients = atol(v);
    else if (!strcmp(a, "k")) k = atol(v);
    else if (!strcmp(a, "warmup")) warmup = atol(v);
    else if (!strcmp(a, "timeout")) timeout = atof(v);
    else if (!strcmp(a, "stalled")) stalled = atol(v);
    else if (!strcmp(a, "every")) every = atol(v) > 0 ? atol(v) : 1;
    else if (!strcmp(a, "samples")) samples = atol(v);
    else if (!strcmp(a, "rate")) rate = atof(v);
    else if (!strcmp(a, "duration")) duration = atof(v);
    else if (!strcmp(a, "hold")) hold = 1;
    else if (!strcmp(a, "sync")) sync_mode = 1;
    else if (!strcmp(a, "deflate")) deflate_on = atoi(v) != 0;
    else if (!strcmp(a, "body")) body_text = v;
  }
  char *list = strdup(url_arg);
  for (char *save, *tok = strtok_r(list, ",", &save); tok && n_urls < 64;
       tok = strtok_r(NULL, ",", &save))
    parse_url(tok, &urls[n_urls++]);

  struct rlimit rl;  // thousands of sockets: raise the soft limit on files
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  if (deflate_on && inflateInit2(&inflater, -15) != Z_OK) die("inflateInit2");
  ep = epoll_create1(0);
  if (ep < 0) die("epoll_create1");
  n_conns = (unsigned)(clients + stalled);
  conns = calloc(n_conns ? n_conns : 1, sizeof *conns);
  lat_cap = samples >= 0 ? samples : clients * k;
  lat = malloc((size_t)(lat_cap > 0 ? lat_cap : 1) * sizeof *lat);
  if (!conns || !lat) die("malloc");

  connect_all(0, (unsigned)clients, 0);
  connect_all((unsigned)clients, n_conns, 1);

  if (hold) {  // idle-memory mode: report, keep the connections until stdin ends
    printf("{\"ready\":%ld}\n", clients);
    fflush(stdout);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = STDIN_TAG};
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);
    while (!stdin_eof) serve(now_ms() + 1000, got_eof);
    return 0;
  }

  if (rate >= 0) {
    // Chat: every client sends `rate` messages/s for `duration` s, on a
    // 10 ms tick that catches up with the clock, as the Node client does.
    serve(now_ms() + 200, NULL);
    received = sampled = skip_count = wire_bytes = compressed = 0;
    wait_go();
    double cpu0 = cpu_ms();
    double started = now_ms();
    long sent = 0, total = (long)(rate * clients * duration);
    while (sent < total) {
      long due = (long)(rate * clients * (now_ms() - started) / 1000);
      if (due > total) due = total;
      while (sent < due) {
        char data[8192];
        if (body_text)
          snprintf(data, sizeof data, "{\"t\":%.3f,\"body\":\"%s\"}", now_ms(), body_text);
        else
          snprintf(data, sizeof data, "{\"t\":%.3f}", now_ms());
        send_event(&conns[sent % clients], "chat", data);
        sent++;
      }
      serve(now_ms() + 10, NULL);
    }
    double send_seconds = (now_ms() - started) / 1000;
    target = sent * clients;
    if (received >= target) say_done();
    serve(now_ms() + 5000, all_received);
    say_done();
    double cpu1 = cpu_ms();
    qsort(lat, (size_t)sampled, sizeof *lat, cmp_double);
    char p50[32], p99[32];
    pct(p50, sizeof p50, 0.5);
    pct(p99, sizeof p99, 0.99);
    printf("{\"clients\":%ld,\"rate\":%g,\"sent\":%ld,\"sendSeconds\":%.6f,\"received\":%ld,"
           "\"expected\":%ld,\"p50_ms\":%s,\"p99_ms\":%s,\"client_cpu_ms\":%.1f,"
           "\"wire_bytes\":%ld,\"compressed\":%ld}\n",
           clients, rate, sent, send_seconds, received, target, p50, p99, cpu1 - cpu0, wire_bytes,
           compressed);
    fflush(stdout);
    return 0;
  }

  // Fan-out: let the servers finish their on-connect work, then one trigger.
  serve(now_ms() + 200, NULL);
  if (warmup > 0) {
    // --warmup N: one burst of N first, not measured: a server process's first
    // burst pays for its cold start (memory it has not touched yet), which a
    // server that has been up for a while does not.
    char data[64];
    snprintf(data, sizeof data, "{\"k\":%ld}", warmup);
    received = 0;
    warm_target = clients * warmup;  // not `target`: that one says "done"
    send_event(&conns[0], "go", data);
    serve(now_ms() + timeout * 1000, warm_received);
    if (received < warm_target) die("the warm-up burst did not arrive");
    serve(now_ms() + 100, NULL);
  }
  received = sampled = skip_count = wire_bytes = compressed = 0;
  long expected = clients * k;
  wait_go();
  double cpu0 = cpu_ms();
  target = expected;
  double started = now_ms();
  char data[64];
  snprintf(data, sizeof data, "{\"k\":%ld}", k);
  send_event(&conns[0], "go", data);
  serve(started + timeout * 1000, all_received);
  say_done();
  double cpu1 = cpu_ms();
  double seconds = (last_at - started) / 1000;
  qsort(lat, (size_t)sampled, sizeof *lat, cmp_double);
  char p50[32], p99[32];
  pct(p50, sizeof p50, 0.5);
  pct(p99, sizeof p99, 0.99);
  printf("{\"clients\":%ld,\"k\":%ld,\"received\":%ld,\"expected\":%ld,\"seconds\":%.6f,"
         "\"rate\":%.1f,\"p50_ms\":%s,\"p99_ms\":%s,\"first_ms\":%.3f,\"client_cpu_ms\":%.1f,"
         "\"wire_bytes\":%ld,\"compressed\":%ld}\n",
         clients, k, received, expected, seconds, seconds > 0 ? received / seconds : 0.0, p50,
         p99, received ? first_at - started : -1.0, cpu1 - cpu0, wire_bytes, compressed);
  fflush(stdout);
  return received == expected ? 0 : 1;
}
