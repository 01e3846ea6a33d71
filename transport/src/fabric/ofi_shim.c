/* Lumen's thin C shim over libfabric (Debian libfabric 1.17 headers).
 *
 * libfabric's data-path calls (fi_read, fi_write, fi_mr_reg, fi_cq_read,
 * fi_av_insert, ...) are static inline functions that jump through the
 * provider's ops tables, so Rust cannot link against them; this file
 * turns the handful Lumen uses into plain functions over one opaque
 * handle. Nothing here keeps state beyond that handle, allocates on the
 * data path, or blocks: progress and waiting are the Rust side's. Every
 * function returns 0 (or a count) on success and a negative libfabric
 * error code (-FI_E...) on failure; messages for setup failures are
 * written to the caller's buffer.
 */
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>

struct lumen_ofi {
    int waitable; /* the queue has a wait object: fi_cq_sread blocks */
    int wait_fd;  /* its file descriptor (FI_WAIT_FD), or -1 */
    struct fi_info *info;
    struct fid_fabric *fabric;
    struct fid_domain *domain;
    struct fid_av *av;
    struct fid_cq *cq;
    struct fid_ep *ep;
};

static void say(char *err, size_t errlen, const char *what, int rc) {
    if (err && errlen) {
        snprintf(err, errlen, "%s: %s (%d)", what, fi_strerror(-rc), rc);
    }
}

void lumen_ofi_close(struct lumen_ofi *h) {
    if (!h) return;
    if (h->ep) fi_close(&h->ep->fid);
    if (h->av) fi_close(&h->av->fid);
    if (h->cq) fi_close(&h->cq->fid);
    if (h->domain) fi_close(&h->domain->fid);
    if (h->fabric) fi_close(&h->fabric->fid);
    if (h->info) fi_freeinfo(h->info);
    free(h);
}

/* Opens an RDM endpoint of provider `prov` ("tcp;ofi_rxm", "shm", "verbs;ofi_rxm",
 * "cxi", "efa", ...), bound to local address `node` when not NULL. */
int lumen_ofi_open(const char *prov, const char *node, struct lumen_ofi **out,
                   char *err, size_t errlen) {
    int rc;
    struct fi_info *hints = fi_allocinfo();
    struct lumen_ofi *h = calloc(1, sizeof(*h));
    if (!hints || !h) {
        if (hints) fi_freeinfo(hints);
        free(h);
        say(err, errlen, "allocating", -FI_ENOMEM);
        return -FI_ENOMEM;
    }
    hints->ep_attr->type = FI_EP_RDM;
    hints->caps = FI_RMA | FI_READ | FI_WRITE | FI_REMOTE_READ | FI_REMOTE_WRITE;
    hints->mode = FI_CONTEXT;
    hints->domain_attr->mr_mode =
        FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY;
    hints->domain_attr->threading = FI_THREAD_SAFE;
    hints->fabric_attr->prov_name = strdup(prov);
    /* Reads after writes to the same target stay ordered (RAW): a writer
     * learns that its writes reached the target by reading one byte back
     * after them (see ofi.rs); software providers complete a write once
     * its source buffer may be reused, before the target has the bytes. */
    /* (shm stops completing reads when asked for RAW order; its command
     * queue to a peer is served first in, first out, which orders the
     * read-back after the writes anyway.) */
    if (strcmp(prov, "shm") != 0) hints->tx_attr->msg_order = FI_ORDER_RAW;
    rc = fi_getinfo(FI_VERSION(1, 9), node, NULL, node ? FI_SOURCE : 0, hints, &h->info);
    fi_freeinfo(hints);
    if (rc) { say(err, errlen, "fi_getinfo", rc); lumen_ofi_close(h); return rc; }
    rc = fi_fabric(h->info->fabric_attr, &h->fabric, NULL);
    if (rc) { say(err, errlen, "fi_fabric", rc); lumen_ofi_close(h); return rc; }
    rc = fi_domain(h->fabric, h->info, &h->domain, NULL);
    if (rc) { say(err, errlen, "fi_domain", rc); lumen_ofi_close(h); return rc; }
    struct fi_cq_attr cq_attr;
    memset(&cq_attr, 0, sizeof(cq_attr));
    cq_attr.format = FI_CQ_FORMAT_CONTEXT;
    /* A wait object lets an idle progress thread sleep in the kernel until
     * the provider has work (fi_cq_sread), instead of spinning or napping;
     * providers without one fall back to polling. */
    /* (shm's fi_cq_sread does not return at its timeout, so a closing
     * endpoint would wait forever for its progress thread: shm polls.) */
    /* A file descriptor (FI_WAIT_FD) is preferred: polling it tells that
     * the provider has work even when none of it completes here (a peer's
     * read served by this target), which fi_cq_sread hides. */
    h->wait_fd = -1;
    cq_attr.wait_obj = strcmp(prov, "shm") == 0 ? FI_WAIT_NONE : FI_WAIT_FD;
    cq_attr.size = 4096;
    rc = fi_cq_open(h->domain, &cq_attr, &h->cq, NULL);
    if (rc == 0 && cq_attr.wait_obj == FI_WAIT_FD) {
        int fd = -1;
        if (fi_control(&h->cq->fid, FI_GETWAIT, &fd) == 0 && fd >= 0) h->wait_fd = fd;
    }
    if (rc && cq_attr.wait_obj == FI_WAIT_FD) {
        cq_attr.wait_obj = FI_WAIT_UNSPEC;
        rc = fi_cq_open(h->domain, &cq_attr, &h->cq, NULL);
    }
    h->waitable = rc == 0 && cq_attr.wait_obj != FI_WAIT_NONE;
    if (rc) {
        cq_attr.wait_obj = FI_WAIT_NONE;
        rc = fi_cq_open(h->domain, &cq_attr, &h->cq, NULL);
    }
    if (rc) { say(err, errlen, "fi_cq_open", rc); lumen_ofi_close(h); return rc; }
    struct fi_av_attr av_attr;
    memset(&av_attr, 0, sizeof(av_attr));
    av_attr.type = FI_AV_TABLE;
    rc = fi_av_open(h->domain, &av_attr, &h->av, NULL);
    if (rc) { say(err, errlen, "fi_av_open", rc); lumen_ofi_close(h); return rc; }
    rc = fi_endpoint(h->domain, h->info, &h->ep, NULL);
    if (rc) { say(err, errlen, "fi_endpoint", rc); lumen_ofi_close(h); return rc; }
    rc = fi_ep_bind(h->ep, &h->av->fid, 0);
    if (rc) { say(err, errlen, "fi_ep_bind(av)", rc); lumen_ofi_close(h); return rc; }
    rc = fi_ep_bind(h->ep, &h->cq->fid, FI_TRANSMIT | FI_RECV);
    if (rc) { say(err, errlen, "fi_ep_bind(cq)", rc); lumen_ofi_close(h); return rc; }
    rc = fi_enable(h->ep);
    if (rc) { say(err, errlen, "fi_enable", rc); lumen_ofi_close(h); return rc; }
    *out = h;
    return 0;
}

/* The provider's and fabric's names, and what the domain's memory
 * registration needs. */
const char *lumen_ofi_provider(const struct lumen_ofi *h) { return h->info->fabric_attr->prov_name; }
const char *lumen_ofi_fabric(const struct lumen_ofi *h) { return h->info->fabric_attr->name; }
uint64_t lumen_ofi_max_msg(const struct lumen_ofi *h) { return h->info->ep_attr->max_msg_size; }
int lumen_ofi_waitable(const struct lumen_ofi *h) { return h->waitable; }
int lumen_ofi_virt_addr(const struct lumen_ofi *h) {
    return (h->info->domain_attr->mr_mode & FI_MR_VIRT_ADDR) != 0;
}
int lumen_ofi_local_mr(const struct lumen_ofi *h) {
    return (h->info->domain_attr->mr_mode & FI_MR_LOCAL) != 0;
}
size_t lumen_ofi_context_size(void) { return sizeof(struct fi_context); }

int lumen_ofi_name(struct lumen_ofi *h, void *buf, size_t *len) {
    return fi_getname(&h->ep->fid, buf, len);
}

/* Inserts one peer address; its fi_addr_t in *out. */
int lumen_ofi_insert(struct lumen_ofi *h, const void *addr, uint64_t *out) {
    fi_addr_t a = FI_ADDR_NOTAVAIL;
    int n = fi_av_insert(h->av, addr, 1, &a, 0, NULL);
    if (n != 1) return n < 0 ? n : -FI_EINVAL;
    *out = (uint64_t)a;
    return 0;
}

/* `requested` is the key asked for where the provider lets the
 * application choose (no FI_MR_PROV_KEY): unique per domain. */
int lumen_ofi_mr_reg(struct lumen_ofi *h, void *buf, size_t len, uint64_t access,
                     uint64_t requested, void **mr, uint64_t *key, void **desc) {
    struct fid_mr *m = NULL;
    (void)access;
    int rc = fi_mr_reg(h->domain, buf, len, FI_READ | FI_WRITE | FI_REMOTE_READ | FI_REMOTE_WRITE,
                       0, requested, 0, &m, NULL);
    if (rc) return rc;
    *mr = m;
    *key = fi_mr_key(m);
    *desc = fi_mr_desc(m);
    return 0;
}

int lumen_ofi_mr_close(void *mr) { return fi_close(&((struct fid_mr *)mr)->fid); }

ssize_t lumen_ofi_read(struct lumen_ofi *h, void *buf, size_t len, void *desc,
                       uint64_t peer, uint64_t addr, uint64_t key, void *ctx) {
    return fi_read(h->ep, buf, len, desc, (fi_addr_t)peer, addr, key, ctx);
}

ssize_t lumen_ofi_write(struct lumen_ofi *h, const void *buf, size_t len, void *desc,
                        uint64_t peer, uint64_t addr, uint64_t key, void *ctx) {
    return fi_write(h->ep, buf, len, desc, (fi_addr_t)peer, addr, key, ctx);
}

/* Reads up to `max` completions into ctxs; returns their count, 0 when
 * none is ready (progress was made), or -FI_EAVAIL after filling one
 * error entry (*err_ctx, *err, and its text in errbuf). Other negative
 * values are errors of the queue itself. */
ssize_t lumen_ofi_poll(struct lumen_ofi *h, void **ctxs, size_t max, int timeout_ms,
                       void **err_ctx, int *err, char *errbuf, size_t errlen) {
    struct fi_cq_entry entries[64];
    if (max > 64) max = 64;
    ssize_t n = (timeout_ms > 0 && h->waitable)
                    ? fi_cq_sread(h->cq, entries, max, NULL, timeout_ms)
                    : fi_cq_read(h->cq, entries, max);
    if (n > 0) {
        for (ssize_t i = 0; i < n; i++) ctxs[i] = entries[i].op_context;
        return n;
    }
    if (n == -FI_EAGAIN) return 0;
    if (n == -FI_EAVAIL) {
        struct fi_cq_err_entry e;
        memset(&e, 0, sizeof(e));
        ssize_t r = fi_cq_readerr(h->cq, &e, 0);
        if (r < 0) return r;
        *err_ctx = e.op_context;
        *err = e.err;
        if (errbuf && errlen) {
            snprintf(errbuf, errlen, "%s (provider: %s)", fi_strerror(e.err),
                     fi_cq_strerror(h->cq, e.prov_errno, e.err_data, NULL, 0));
        }
        return -FI_EAVAIL;
    }
    return n;
}

/* Sleeps until the provider has work or `timeout_ms` passes, on the
 * queue's file descriptor (after fi_trywait, as libfabric requires):
 * returns 1 when there is work (or may be: go and poll), 0 on timeout,
 * -FI_ENOSYS without a descriptor (use lumen_ofi_poll's timeout), or
 * another negative error. */
int lumen_ofi_wait(struct lumen_ofi *h, int timeout_ms) {
    if (h->wait_fd < 0) return -FI_ENOSYS;
    struct fid *fids[1] = { &h->cq->fid };
    int rc = fi_trywait(h->fabric, fids, 1);
    if (rc == -FI_EAGAIN) return 1;
    if (rc) return rc;
    struct pollfd p = { .fd = h->wait_fd, .events = POLLIN, .revents = 0 };
    rc = poll(&p, 1, timeout_ms);
    if (rc > 0) return 1;
    if (rc == 0) return 0;
    return errno == EINTR ? 1 : -errno;
}

const char *lumen_ofi_strerror(int rc) { return fi_strerror(rc < 0 ? -rc : rc); }
