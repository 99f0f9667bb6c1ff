/*
 * fuse3-floor-napi: the fuse-native floor rebuilt on libfuse3 (a spike, not product code). A libfuse3
 * low-level session runs on its own thread(s); every READ goes to JavaScript through a thread-safe
 * function, as fuse-native's reads do, and JavaScript answers with reply(id, buffer, n), which replies
 * from the JS thread (the bytes JS wrote into an external buffer over the slot's memory). Only the file's metadata (one file /blob of SIZE bytes) is answered in C.
 * This measures what regfs would get from an N-API binding over libfuse3: the JS hop stays, the request
 * size can grow to 1 MiB. Exports: mount(mnt, size, single, statsFile, onRead), reply(id, n), unmount().
 * Spike shortcut: the buffer handed to JS must not be used after reply(), its memory is reused.
 */
#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>
#include <node_api.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BLOB_INO 2
#define SLOTS 4096
#define BUCKETS 1025
#define FUSE_MAX_READ (1024 * 1024) /* libfuse 3.14's largest request: max_pages 256 */

typedef struct {
  fuse_req_t req;
  size_t size;
  off_t off;
} job_t;

static struct fuse_session *se;
static pthread_t loop_thread;
static napi_threadsafe_function tsfn;
static napi_ref on_read_ref;
static off_t blob_size;
static int single_thread, stopping;
static char stats_path[4096];
static char init_line[256];
static job_t slots[SLOTS];
static char *slot_mem[SLOTS]; /* 1 MiB per slot, allocated on first use, reused (like fuse-native, which
                                 hands JS an external buffer over libfuse's own read buffer) */
static int free_ids[SLOTS], nfree;
static pthread_mutex_t slot_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long hist[BUCKETS];
static unsigned long long reads, read_bytes;

static void ll_init(void *u, struct fuse_conn_info *conn) {
  (void)u;
  snprintf(init_line, sizeof init_line, "proto=7.%u max_write=%u max_readahead=%u", conn->proto_minor,
           conn->max_write, conn->max_readahead);
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

static void ll_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
  if (parent != FUSE_ROOT_ID || strcmp(name, "blob") != 0) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  struct fuse_entry_param e;
  memset(&e, 0, sizeof e);
  e.ino = BLOB_INO;
  e.attr_timeout = e.entry_timeout = 1.0;
  stat_of(BLOB_INO, &e.attr);
  fuse_reply_entry(req, &e);
}

static void ll_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  (void)fi;
  if (ino != FUSE_ROOT_ID && ino != BLOB_INO) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  struct stat st;
  stat_of(ino, &st);
  fuse_reply_attr(req, &st, 1.0);
}

static void ll_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  if (ino != BLOB_INO) fuse_reply_err(req, EISDIR);
  else if ((fi->flags & O_ACCMODE) != O_RDONLY) fuse_reply_err(req, EACCES);
  else fuse_reply_open(req, fi);
}

static void ll_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  (void)ino;
  (void)fi;
  size_t page = size / 4096;
  __atomic_fetch_add(&hist[page < BUCKETS ? page : BUCKETS - 1], 1, __ATOMIC_RELAXED);
  __atomic_fetch_add(&reads, 1, __ATOMIC_RELAXED);
  size_t n = off >= blob_size ? 0 : (size_t)(blob_size - off) < size ? (size_t)(blob_size - off) : size;
  if (n == 0) {
    fuse_reply_buf(req, NULL, 0);
    return;
  }
  pthread_mutex_lock(&slot_lock);
  int id = nfree > 0 ? free_ids[--nfree] : -1;
  pthread_mutex_unlock(&slot_lock);
  if (id < 0) {
    fuse_reply_err(req, EAGAIN);
    return;
  }
  if (!slot_mem[id]) slot_mem[id] = malloc(FUSE_MAX_READ);
  if (n > FUSE_MAX_READ) n = FUSE_MAX_READ;
  slots[id] = (job_t){req, n, off};
  napi_call_threadsafe_function(tsfn, (void *)(intptr_t)(id + 1), napi_tsfn_nonblocking);
}

static const struct fuse_lowlevel_ops ops = {
    .init = ll_init, .lookup = ll_lookup, .getattr = ll_getattr, .open = ll_open, .read = ll_read};

static void release_slot(int id) {
  pthread_mutex_lock(&slot_lock);
  free_ids[nfree++] = id;
  pthread_mutex_unlock(&slot_lock);
}

/* On the JS thread: onRead(id, buffer, offset); JS fills buffer and calls reply(id, n), now or later. */
static void call_js(napi_env env, napi_value cb, void *ctx, void *data) {
  (void)cb;
  (void)ctx;
  int id = (int)(intptr_t)data - 1;
  if (env == NULL || stopping) {
    if (!stopping) fuse_reply_err(slots[id].req, EIO);
    release_slot(id);
    return;
  }
  napi_value fn, args[3], undef;
  napi_get_reference_value(env, on_read_ref, &fn);
  napi_create_int32(env, id, &args[0]);
  napi_create_external_buffer(env, slots[id].size, slot_mem[id], NULL, NULL, &args[1]);
  napi_create_double(env, (double)slots[id].off, &args[2]);
  napi_get_undefined(env, &undef);
  napi_call_function(env, undef, fn, 3, args, NULL);
}

static napi_value js_reply(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t id;
  uint32_t n;
  napi_get_value_int32(env, argv[0], &id);
  napi_get_value_uint32(env, argv[1], &n);
  if (id < 0 || id >= SLOTS) return NULL;
  if (n > slots[id].size) n = (uint32_t)slots[id].size;
  __atomic_fetch_add(&read_bytes, n, __ATOMIC_RELAXED);
  if (!stopping) fuse_reply_buf(slots[id].req, slot_mem[id], n);
  release_slot(id);
  return NULL;
}

static void *loop_main(void *arg) {
  (void)arg;
  if (single_thread) {
    fuse_session_loop(se);
  } else {
    struct fuse_loop_config cfg = {.clone_fd = 0, .max_idle_threads = 10};
    fuse_session_loop_mt(se, &cfg);
  }
  return NULL;
}

static napi_value js_mount(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5], name;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char mnt[4096];
  size_t len;
  double size;
  bool single;
  napi_get_value_string_utf8(env, argv[0], mnt, sizeof mnt, &len);
  napi_get_value_double(env, argv[1], &size);
  napi_get_value_bool(env, argv[2], &single);
  napi_get_value_string_utf8(env, argv[3], stats_path, sizeof stats_path, &len);
  blob_size = (off_t)size;
  single_thread = single;
  for (int i = SLOTS - 1; i >= 0; i--) free_ids[nfree++] = i;
  napi_create_reference(env, argv[4], 1, &on_read_ref);
  napi_create_string_utf8(env, "fuse3-read", NAPI_AUTO_LENGTH, &name);
  napi_create_threadsafe_function(env, NULL, NULL, name, 0, 1, NULL, NULL, NULL, call_js, &tsfn);
  char *fargv[] = {"fuse3-floor-napi", "-o", "fsname=regfs-floor3-napi,ro", NULL};
  struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
  se = fuse_session_new(&args, &ops, sizeof ops, NULL);
  if (!se || fuse_session_mount(se, mnt) != 0) {
    napi_throw_error(env, NULL, "fuse3-floor-napi: cannot mount");
    return NULL;
  }
  pthread_create(&loop_thread, NULL, loop_main, NULL);
  return NULL;
}

static napi_value js_unmount(napi_env env, napi_callback_info info) {
  (void)info;
  if (!se) return NULL;
  stopping = 1;
  fuse_session_exit(se);
  fuse_session_unmount(se); /* the loop's read of /dev/fuse fails now and the loop returns */
  pthread_join(loop_thread, NULL);
  if (stats_path[0]) {
    FILE *f = fopen(stats_path, "w");
    if (f) {
      fprintf(f, "libfuse=%s via N-API, loop=%s, reads answered by JS; %s\n", fuse_pkgversion(),
              single_thread ? "single" : "mt", init_line);
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
  }
  fuse_session_destroy(se);
  se = NULL;
  napi_release_threadsafe_function(tsfn, napi_tsfn_release);
  napi_delete_reference(env, on_read_ref);
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"mount", NULL, js_mount, NULL, NULL, NULL, napi_default, NULL},
      {"reply", NULL, js_reply, NULL, NULL, NULL, napi_default, NULL},
      {"unmount", NULL, js_unmount, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, 3, props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
