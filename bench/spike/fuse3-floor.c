/*
 * fuse3-floor: the libfuse3 twin of bench/fuse-floor-server.ts (a spike, not product code).
 *
 * One read-only file /blob of SIZE bytes, answered from a 1 MiB buffer in memory, through libfuse3's
 * low-level API. `cat` through it is the floor under any libfuse3 filesystem on this machine.
 *
 * Usage: fuse3-floor MOUNTPOINT SIZE [--req-kb N] [--single] [--stats FILE]
 *   --req-kb N   cap read requests at N KiB: mount option max_read=N KiB (conn->max_read must match)
 *                and conn->max_write = N KiB, which is what libfuse 3.14 turns into init_out.max_pages.
 *                Without it libfuse 3.14 offers its default: max_write = 1 MiB, so max_pages = 256.
 *   --single     fuse_session_loop (one thread) instead of fuse_session_loop_mt.
 *   --stats FILE on exit write what init negotiated and a histogram of the `size` of every READ request.
 * Prints "mounted" once mounted; SIGTERM/SIGINT end the loop, unmount and exit 0.
 */
#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BLOB_INO 2
#define SRC_SIZE (1024 * 1024)
#define BUCKETS 1025 /* request sizes in 4 KiB pages, 0..4 MiB; the last bucket also takes anything larger */

static off_t blob_size;
static unsigned req_bytes; /* 0: libfuse default */
static char *src;          /* SRC_SIZE bytes of 'Z' */
static unsigned long hist[BUCKETS];
static unsigned long long reads, read_bytes;
static char init_line[512];

static void floor_init(void *userdata, struct fuse_conn_info *conn) {
  (void)userdata;
  if (req_bytes) {
    conn->max_read = req_bytes;
    conn->max_write = req_bytes;
  }
  snprintf(init_line, sizeof init_line,
           "proto=7.%u max_write=%u max_read=%u max_readahead=%u async_read=%d splice_write=%d",
           conn->proto_minor, conn->max_write, conn->max_read, conn->max_readahead,
           !!(conn->want & FUSE_CAP_ASYNC_READ), !!(conn->want & FUSE_CAP_SPLICE_WRITE));
}

static void stat_of(fuse_ino_t ino, struct stat *st) {
  memset(st, 0, sizeof *st);
  st->st_ino = ino;
  st->st_uid = getuid();
  st->st_gid = getgid();
  st->st_nlink = ino == FUSE_ROOT_ID ? 2 : 1;
  st->st_mode = ino == FUSE_ROOT_ID ? S_IFDIR | 0555 : S_IFREG | 0444;
  st->st_size = ino == FUSE_ROOT_ID ? 4096 : blob_size;
}

static void floor_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
  if (parent != FUSE_ROOT_ID || strcmp(name, "blob") != 0) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  struct fuse_entry_param e;
  memset(&e, 0, sizeof e);
  e.ino = BLOB_INO;
  e.attr_timeout = 1.0;
  e.entry_timeout = 1.0;
  stat_of(BLOB_INO, &e.attr);
  fuse_reply_entry(req, &e);
}

static void floor_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  (void)fi;
  if (ino != FUSE_ROOT_ID && ino != BLOB_INO) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  struct stat st;
  stat_of(ino, &st);
  fuse_reply_attr(req, &st, 1.0);
}

static void floor_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  if (ino != BLOB_INO) {
    fuse_reply_err(req, EISDIR);
    return;
  }
  if ((fi->flags & O_ACCMODE) != O_RDONLY) {
    fuse_reply_err(req, EACCES);
    return;
  }
  fi->keep_cache = 0; /* like auto_cache on a fresh mount: the page cache starts cold either way */
  fuse_reply_open(req, fi);
}

/* Like fuse-floor-server.ts, which copies from its 1 MiB buffer into libfuse2's reply buffer, the
 * reply is `size` bytes of the source buffer. libfuse3 lets us hand it an iovec instead of copying:
 * for size <= 1 MiB that is a single pointer into src, so this is the honest cheapest libfuse3 read. */
static void floor_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  (void)ino;
  (void)fi;
  size_t page = size / 4096;
  __atomic_fetch_add(&hist[page < BUCKETS ? page : BUCKETS - 1], 1, __ATOMIC_RELAXED);
  __atomic_fetch_add(&reads, 1, __ATOMIC_RELAXED);
  size_t n = off >= blob_size ? 0 : (size_t)(blob_size - off) < size ? (size_t)(blob_size - off) : size;
  __atomic_fetch_add(&read_bytes, n, __ATOMIC_RELAXED);
  struct iovec iov[8];
  int cnt = 0;
  for (size_t done = 0; done < n && cnt < 8; cnt++) {
    size_t part = n - done < SRC_SIZE ? n - done : SRC_SIZE;
    iov[cnt].iov_base = src;
    iov[cnt].iov_len = part;
    done += part;
  }
  fuse_reply_iov(req, iov, cnt);
}

static void floor_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  (void)fi;
  if (ino != FUSE_ROOT_ID) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  char buf[512];
  size_t used = 0;
  const char *names[] = {".", "..", "blob"};
  for (off_t i = off; i < 3; i++) {
    struct stat st;
    stat_of(i == 2 ? BLOB_INO : FUSE_ROOT_ID, &st);
    size_t len = fuse_add_direntry(req, buf + used, sizeof buf - used, names[i], &st, i + 1);
    if (len > sizeof buf - used || used + len > size) break;
    used += len;
  }
  fuse_reply_buf(req, buf, used);
}

static const struct fuse_lowlevel_ops ops = {
    .init = floor_init,
    .lookup = floor_lookup,
    .getattr = floor_getattr,
    .open = floor_open,
    .read = floor_read,
    .readdir = floor_readdir,
};

static void write_stats(const char *path, int single) {
  FILE *f = fopen(path, "w");
  if (!f) {
    fprintf(stderr, "fuse3-floor: cannot write stats to %s: %s\n", path, strerror(errno));
    return;
  }
  fprintf(f, "libfuse=%s loop=%s req_kb=%u %s\n", fuse_pkgversion(), single ? "single" : "mt", req_bytes / 1024, init_line);
  fprintf(f, "reads=%llu bytes=%llu\n", reads, read_bytes);
  unsigned long most = 0;
  int most_at = 0;
  for (int i = 0; i < BUCKETS; i++) {
    if (!hist[i]) continue;
    fprintf(f, "size %d KiB: %lu\n", i * 4, hist[i]);
    if (hist[i] > most) most = hist[i], most_at = i;
  }
  fprintf(f, "mode_kib=%d\n", most_at * 4);
  fclose(f);
}

int main(int argc, char **argv) {
  const char *stats = NULL;
  int single = 0;
  if (argc < 3) goto usage;
  const char *mnt = argv[1];
  char *end;
  long long sz = strtoll(argv[2], &end, 10);
  if (*end || sz <= 0) goto usage;
  blob_size = sz;
  for (int i = 3; i < argc; i++) {
    if (!strcmp(argv[i], "--single")) single = 1;
    else if (!strcmp(argv[i], "--req-kb") && i + 1 < argc) req_bytes = (unsigned)atoi(argv[++i]) * 1024;
    else if (!strcmp(argv[i], "--stats") && i + 1 < argc) stats = argv[++i];
    else goto usage;
  }
  src = malloc(SRC_SIZE);
  memset(src, 'Z', SRC_SIZE);

  char opts[256];
  if (req_bytes) snprintf(opts, sizeof opts, "fsname=regfs-floor3,ro,max_read=%u", req_bytes);
  else snprintf(opts, sizeof opts, "fsname=regfs-floor3,ro");
  char *fargv[] = {argv[0], "-o", opts, NULL};
  struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
  struct fuse_session *se = fuse_session_new(&args, &ops, sizeof ops, NULL);
  if (!se) return 1;
  if (fuse_set_signal_handlers(se) != 0) return 1;
  if (fuse_session_mount(se, mnt) != 0) {
    fprintf(stderr, "fuse3-floor: cannot mount %s\n", mnt);
    return 1;
  }
  printf("mounted\n");
  fflush(stdout);
  int rc;
  if (single) {
    rc = fuse_session_loop(se);
  } else {
    struct fuse_loop_config cfg = {.clone_fd = 0, .max_idle_threads = 10};
    rc = fuse_session_loop_mt(se, &cfg);
  }
  if (stats) write_stats(stats, single);
  fuse_session_unmount(se);
  fuse_remove_signal_handlers(se);
  fuse_session_destroy(se);
  return rc < 0 ? 1 : 0;
usage:
  fprintf(stderr, "usage: fuse3-floor MOUNTPOINT SIZE [--req-kb N] [--single] [--stats FILE]\n");
  return 2;
}
