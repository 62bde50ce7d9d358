// Not a peer: the load client's ceiling, native. The cheapest server possible,
// as bench/servers/ceiling.mjs but in C, so that the figure is the client's
// limit even for the native client: it answers the handshake; on a trigger
// {"type":"go","data":{"k":K}} it frames K ~100-byte messages once and writes
// them to every client (one write each); each chat message is re-sent as it
// is to everyone, the messages of one loop pass in one write per client; a
// request (a frame with a "ref") is answered at once with its reply.
//
//   cc -O2 -o bench/build/ceiling bench/servers/ceiling.c   (bench/native.py)
//   bench/build/ceiling PORT
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
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
  int open;  // handshake answered
  char *in;  // bytes not parsed yet
  size_t in_len, in_cap;
  char *out;  // bytes the socket would not take yet
  size_t out_len, out_off, out_cap;
  int want_out;
} Conn;

static Conn *conns;  // by fd
static int conns_cap;
static int *open_fds;
static int n_open, open_cap;
static int ep;
static char *chat;  // chat frames of this loop pass, sent to all at its end
static size_t chat_len, chat_cap;

static void die(const char *what) {
  fprintf(stderr, "ceiling: %s: %s\n", what, strerror(errno));
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

// SHA-1 (RFC 3174) and base64, for Sec-WebSocket-Accept only.
static void sha1(const uint8_t *msg, size_t len, uint8_t out[20]) {
  uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
  size_t total = ((len + 8) / 64 + 1) * 64;
  uint8_t *m = calloc(total, 1);
  if (!m) die("calloc");
  memcpy(m, msg, len);
  m[len] = 0x80;
  uint64_t bits = (uint64_t)len * 8;
  for (int i = 0; i < 8; i++) m[total - 1 - i] = (uint8_t)(bits >> (8 * i));
  for (size_t off = 0; off < total; off += 64) {
    uint32_t w[80];
    for (int i = 0; i < 16; i++)
      w[i] = (uint32_t)m[off + 4 * i] << 24 | (uint32_t)m[off + 4 * i + 1] << 16 |
             (uint32_t)m[off + 4 * i + 2] << 8 | m[off + 4 * i + 3];
    for (int i = 16; i < 80; i++) {
      uint32_t x = w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16];
      w[i] = x << 1 | x >> 31;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int i = 0; i < 80; i++) {
      uint32_t f, k;
      if (i < 20) f = (b & c) | (~b & d), k = 0x5A827999;
      else if (i < 40) f = b ^ c ^ d, k = 0x6ED9EBA1;
      else if (i < 60) f = (b & c) | (b & d) | (c & d), k = 0x8F1BBCDC;
      else f = b ^ c ^ d, k = 0xCA62C1D6;
      uint32_t t = (a << 5 | a >> 27) + f + e + k + w[i];
      e = d, d = c, c = b << 30 | b >> 2, b = a, a = t;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e;
  }
  free(m);
  for (int i = 0; i < 20; i++) out[i] = (uint8_t)(h[i / 4] >> (24 - 8 * (i % 4)));
}

static void base64(const uint8_t *in, size_t len, char *out) {
  static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  size_t o = 0;
  for (size_t i = 0; i < len; i += 3) {
    uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < len ? in[i + 1] << 8 : 0) |
                 (i + 2 < len ? in[i + 2] : 0);
    out[o++] = abc[v >> 18 & 63];
    out[o++] = abc[v >> 12 & 63];
    out[o++] = i + 1 < len ? abc[v >> 6 & 63] : '=';
    out[o++] = i + 2 < len ? abc[v & 63] : '=';
  }
  out[o] = 0;
}

static void drop(int fd) {
  Conn *c = &conns[fd];
  epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
  close(fd);
  if (c->open)
    for (int i = 0; i < n_open; i++)
      if (open_fds[i] == fd) {
        open_fds[i] = open_fds[--n_open];
        break;
      }
  free(c->in);
  free(c->out);
  memset(c, 0, sizeof *c);
}

static void set_out(int fd, int want) {
  Conn *c = &conns[fd];
  if (want == c->want_out) return;
  c->want_out = want;
  struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.fd = fd};
  epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
}

// Write what the socket takes; keep the rest (in order) until it is writable.
static void send_bytes(int fd, const char *data, size_t len) {
  Conn *c = &conns[fd];
  if (c->out_len == c->out_off) {
    ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
    if (n == (ssize_t)len) return;
    if (n < 0) {
      if (errno != EAGAIN && errno != EINTR) return;  // EOF will drop it
      n = 0;
    }
    data += n, len -= (size_t)n;
    c->out_off = c->out_len = 0;
  }
  c->out = grow(c->out, &c->out_cap, c->out_len + len);
  memcpy(c->out + c->out_len, data, len);
  c->out_len += len;
  set_out(fd, 1);
}

static void on_writable(int fd) {
  Conn *c = &conns[fd];
  while (c->out_off < c->out_len) {
    ssize_t n = send(fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) return;
      return;
    }
    c->out_off += (size_t)n;
  }
  c->out_off = c->out_len = 0;
  set_out(fd, 0);
}

static size_t text_frame(char *dst, const char *payload, size_t len) {
  size_t head = 2;
  dst[0] = (char)0x81;
  if (len < 126) {
    dst[1] = (char)len;
  } else {
    dst[1] = 126, dst[2] = (char)(len >> 8), dst[3] = (char)(len & 255);
    head = 4;
  }
  memcpy(dst + head, payload, len);
  return head + len;
}

// With BENCH_CEILING_WRITE=N (bytes): the K messages go out in batches of
// about N bytes, each stamped when it is framed and written to every client
// before the next is framed, as a server that writes each socket once per
// batch does: the kernel's cost and the latency of writes of that size,
// with nothing of a server's own work around them.
static size_t write_batch;

static void fan_out(long k) {
  size_t cap = (size_t)k * 160 + 1, len = 0;
  char *all = malloc(cap);
  if (!all) die("malloc");
  long i = 0;
  while (i < k) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    double t = ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
    len = 0;
    for (; i < k && (write_batch == 0 || len < write_batch); i++) {
      char text[150];
      int n = snprintf(text, sizeof text,
                       "{\"type\":\"tick\",\"data\":{\"t\":%.3f,\"i\":%ld,\"pad\":\"%s\"}}", t,
                       i, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
      len += text_frame(all + len, text, (size_t)n);
    }
    for (int j = 0; j < n_open; j++) send_bytes(open_fds[j], all, len);
  }
  free(all);
}

// A request ({"type":...,"ref":"R",...}): the reply at once, with data 0.
static int on_request(int fd, char *p, size_t len) {
  const char *ref = memmem(p, len, "\"ref\":\"", 7);
  if (!ref) return 0;
  ref += 7;
  const char *end = memchr(ref, '"', len - (size_t)(ref - p));
  if (!end || end - ref > 100) return 1;
  char text[160], frame[164];
  int n = snprintf(text, sizeof text, "{\"type\":\"reply\",\"ref\":\"%.*s\",\"ok\":true,\"data\":0}",
                   (int)(end - ref), ref);
  send_bytes(fd, frame, text_frame(frame, text, (size_t)n));
  return 1;
}

static void on_frame(int fd, char *p, size_t len) {
  if (on_request(fd, p, len)) return;
  if (memmem(p, len, "\"chat\"", 6)) {
    chat = grow(chat, &chat_cap, chat_len + len + 4);
    chat_len += text_frame(chat + chat_len, p, len);
    return;
  }
  const char *k = memmem(p, len, "\"k\":", 4);
  if (k) fan_out(atol(k + 4));
}

static void on_readable(int fd) {
  Conn *c = &conns[fd];
  c->in = grow(c->in, &c->in_cap, c->in_len + 65536);
  ssize_t n = recv(fd, c->in + c->in_len, 65536, 0);
  if (n <= 0) {
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    drop(fd);
    return;
  }
  c->in_len += (size_t)n;
  size_t pos = 0;
  if (!c->open) {
    char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
    if (!end) return;
    *end = 0;
    char *key = strcasestr(c->in, "Sec-WebSocket-Key:");
    if (!key) {
      drop(fd);
      return;
    }
    key += 18;
    while (*key == ' ') key++;
    size_t kl = strcspn(key, "\r\n ");
    char src[128];
    int sl = snprintf(src, sizeof src, "%.*s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", (int)kl, key);
    uint8_t digest[20];
    char accept[32], resp[256];
    sha1((const uint8_t *)src, (size_t)sl, digest);
    base64(digest, 20, accept);
    int rl = snprintf(resp, sizeof resp,
                      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                      accept);
    send_bytes(fd, resp, (size_t)rl);
    c->open = 1;
    if (n_open == open_cap) {
      open_cap = open_cap ? open_cap * 2 : 1024;
      open_fds = realloc(open_fds, (size_t)open_cap * sizeof *open_fds);
      if (!open_fds) die("realloc");
    }
    open_fds[n_open++] = fd;
    pos = (size_t)(end - c->in) + 4;
  }
  // Client frames: masked, short.
  uint8_t *b = (uint8_t *)c->in;
  while (c->in_len - pos >= 6) {
    size_t len = b[pos + 1] & 0x7f, head = 6;
    if (len == 126) {
      if (c->in_len - pos < 8) break;
      len = (size_t)b[pos + 2] << 8 | b[pos + 3];
      head = 8;
    } else if (len == 127) {
      drop(fd);  // no client of ours sends that much
      return;
    }
    if (c->in_len - pos < head + len) break;
    uint8_t *mask = b + pos + head - 4;
    char *p = c->in + pos + head;
    for (size_t i = 0; i < len; i++) p[i] ^= mask[i & 3];
    if ((b[pos] & 0x0f) == 1) on_frame(fd, p, len);
    pos += head + len;
  }
  memmove(c->in, c->in + pos, c->in_len - pos);
  c->in_len -= pos;
}

int main(int argc, char **argv) {
  const char *batch = getenv("BENCH_CEILING_WRITE");
  if (batch) write_batch = (size_t)atol(batch);
  if (argc < 2) {
    fprintf(stderr, "usage: ceiling PORT\n");
    return 2;
  }
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind");
  if (listen(lfd, 1024) < 0) die("listen");
  ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
  struct epoll_event evs[1024];
  for (;;) {
    int n = epoll_wait(ep, evs, 1024, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("epoll_wait");
    }
    for (int i = 0; i < n; i++) {
      int fd = evs[i].data.fd;
      if (fd == lfd) {
        int cfd;
        while ((cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
          setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          if (cfd >= conns_cap) {
            int cap = conns_cap ? conns_cap : 1024;
            while (cap <= cfd) cap *= 2;
            conns = realloc(conns, (size_t)cap * sizeof *conns);
            if (!conns) die("realloc");
            memset(conns + conns_cap, 0, (size_t)(cap - conns_cap) * sizeof *conns);
            conns_cap = cap;
          }
          struct epoll_event cev = {.events = EPOLLIN, .data.fd = cfd};
          epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &cev);
        }
        continue;
      }
      if (evs[i].events & EPOLLOUT) on_writable(fd);
      if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(fd);
    }
    if (chat_len) {  // corked: one write per client per loop pass
      for (int i = 0; i < n_open; i++) send_bytes(open_fds[i], chat, chat_len);
      chat_len = 0;
    }
  }
}
