/* Output: every reply and template record as JSON (-o json) or for people.
 * The JSON field names are an interface (scripts and tests read them). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "driver.h"
#include "text.h"
#include "util.h"

const char *
esc(const char *s)
{
	/* A few at a time in one printf; the longest (an error with a serial
	 * tail) is 1 KiB before escaping. */
	static char ring[8][8192];
	static unsigned next;
	char *out = ring[next++ % 8];
	vmf_escape(s ? s : "", out, sizeof(ring[0]), 0);
	return out;
}

void
print_error(const char *fmt, ...)
{
	char msg[4096], out[4 * sizeof(msg)];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	/* Its lines kept (a serial log's tail has several), each after the
	 * first indented: none can pass for a line of ours. */
	vmf_escape(msg, out, sizeof(out), VMF_ESC_NEWLINE);
	fputs("vmfactory: ", stderr);
	for (const char *l = out, *nl; *l; l = nl + 1) {
		nl = strchr(l, '\n');
		if (!nl) {
			fputs(l, stderr);
			break;
		}
		fwrite(l, 1, (size_t)(nl - l), stderr);
		fputs("\n    ", stderr);
	}
	fputc('\n', stderr);
}

/* json-c escapes the C0 controls, quotes and backslashes in strings and
 * nothing else: DEL, C1 controls, direction marks and invalid UTF-8 would
 * reach the terminal of whoever reads the JSON.  They only ever occur in
 * strings, where \uNNNN means the same character (U+FFFD for a byte that is
 * no UTF-8). */
static void
put_json_text(const char *js)
{
	const unsigned char *p = (const unsigned char *)js;
	while (*p) {
		size_t run = vmf_utf8_valid_len((const char *)p, strlen((const char *)p));
		char esc_buf[16];
		/* Safe characters go out in runs; the others one by one. */
		size_t k = 0;
		while (k < run) {
			char one[8];
			size_t clen = vmf_utf8_valid_len((const char *)p + k, run - k > 4 ? 4 : run - k);
			size_t l = 1;
			while (l < clen && ((p[k + l] & 0xc0) == 0x80))
				l++;
			memcpy(one, p + k, l);
			one[l] = '\0';
			if (vmf_text_is_safe(one) || one[0] == '\n') {
				fwrite(p + k, 1, l, stdout);
			} else {
				/* Decode the one character (at most 3 bytes here). */
				unsigned cp = l == 1 ? p[k] : l == 2 ? (p[k] & 0x1fu) << 6 | (p[k + 1] & 0x3fu)
					      : (p[k] & 0x0fu) << 12 | (p[k + 1] & 0x3fu) << 6 | (p[k + 2] & 0x3fu);
				snprintf(esc_buf, sizeof(esc_buf), "\\u%04x", cp);
				fputs(esc_buf, stdout);
			}
			k += l;
		}
		p += run;
		if (*p) {
			fputs("\\ufffd", stdout);
			p++;
		}
	}
	fputc('\n', stdout);
}

void
print_json(json_object *j)
{
	put_json_text(json_object_to_json_string_ext(j, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(j);
}

static json_object *
diskinfo_json(const Vmf__Control__DiskInfo *d)
{
	json_object *o = json_object_new_object();
	JS(o, "path", d->path);
	JS(o, "kind", d->kind);
	JB(o, "read_only", d->read_only);
	JS(o, "format", d->format);
	JS(o, "guest_path", d->guest_path);
	JS(o, "fstype", d->fstype);
	JS(o, "serial", d->serial);
	JS(o, "guest_device", d->guest_device);
	return o;
}

static void
diskinfo_human(const Vmf__Control__DiskInfo *d, const char *lead)
{
	printf("%s%s %s (%s, %s) as %s%s%s\n", lead, esc(d->kind), esc(d->path), esc(d->format),
	       d->read_only ? "read-only" : "read-write",
	       esc(d->guest_device && *d->guest_device ? d->guest_device : d->serial),
	       d->guest_path && *d->guest_path ? " mounted at " : "", esc(d->guest_path));
}

json_object *
disk_json(const Vmf__Control__Reply *r)
{
	return diskinfo_json(r->disk);
}

void
disk_human(const Vmf__Control__Reply *r)
{
	diskinfo_human(r->disk, "");
}

static json_object *
exit_json(const Vmf__Hv__VmExit *e)
{
	json_object *o = json_object_new_object();
	JS(o, "cause", e->cause);
	JS(o, "detail", e->detail);
	JB(o, "status_known", e->status_known);
	JI(o, "exit_code", e->exit_code);
	JI(o, "signal", e->signal);
	JB(o, "oom_killed", e->oom_killed);
	JS(o, "oom_source", e->oom_source);
	JS(o, "event", e->event);
	JI(o, "at_ns", e->at_ns);
	JI(o, "resets", e->resets);
	JS(o, "serial_tail", e->serial_tail);
	return o;
}

static json_object *
stop_json(const Vmf__Control__StopReport *sr)
{
	json_object *o = json_object_new_object(), *l = json_object_new_array();
	JS(o, "method", sr->method);
	JI(o, "guest_ms", sr->guest_ms);
	JB(o, "forced", sr->forced);
	for (size_t i = 0; i < sr->n_lost_writes; i++)
		json_object_array_add(l, json_object_new_string(sr->lost_writes[i]));
	json_object_object_add(o, "lost_writes", l);
	return o;
}

/* The serial log's tail: already escaped by the daemon, so it is printed
 * as it is, indented. */
static void
exit_human(const Vmf__Hv__VmExit *e, bool tail)
{
	printf("%-14s%s: %s\n", e->resets ? "last reset:" : "exit:", esc(e->cause), esc(e->detail));
	if (tail && e->serial_tail && *e->serial_tail) {
		printf("serial log (its last 4 KiB):\n");
		for (const char *l = e->serial_tail; *l;) {
			size_t n = strcspn(l, "\n");
			char line[1024];
			snprintf(line, sizeof(line), "%.*s", (int)n, l);
			printf("  | %s\n", esc(line));
			l += n + (l[n] == '\n');
		}
	}
}

static void
stop_human(const Vmf__Control__StopReport *sr)
{
	if (sr->forced)
		print_error("the guest did not finish its %s within the stop timeout: stopped anyway", sr->method);
	for (size_t i = 0; i < sr->n_lost_writes; i++)
		print_error("may have lost writes: %s", sr->lost_writes[i]);
}

json_object *
release_json(const Vmf__Control__Reply *r)
{
	const Vmf__Control__ReleaseReply *rr = r->release;
	json_object *o = json_object_new_object();
	JS(o, "vm_id", rr->vm_id);
	if (rr->stop)
		json_object_object_add(o, "stop", stop_json(rr->stop));
	if (rr->exit)
		json_object_object_add(o, "exit", exit_json(rr->exit));
	return o;
}

void
release_human(const Vmf__Control__Reply *r)
{
	const Vmf__Control__ReleaseReply *rr = r->release;
	if (rr->exit)
		printf("VM %s had ended: %s: %s\n", esc(rr->vm_id), esc(rr->exit->cause), esc(rr->exit->detail));
	if (rr->stop)
		stop_human(rr->stop);
	if (rr->stop && rr->stop->method[0])
		printf("released %s (stop: %s, the guest's part %llu ms)\n", esc(rr->vm_id), esc(rr->stop->method),
		       (unsigned long long)rr->stop->guest_ms);
	else
		printf("released %s\n", esc(rr->vm_id));
}

static json_object *
vminfo_json(const Vmf__Control__VmInfo *v)
{
	json_object *o = json_object_new_object();
	JS(o, "id", v->id);
	JI(o, "pid", v->pid);
	JI(o, "vcpus", v->vcpus);
	JI(o, "memory_mib", v->memory_mib);
	JS(o, "qmp_socket", v->qmp_socket);
	JS(o, "agent_socket", v->agent_socket);
	JS(o, "agent_transport", v->agent_transport);
	JI(o, "agent_vsock_port", v->agent_vsock_port);
	JS(o, "share_dir", v->share_dir);
	JS(o, "run_dir", v->run_dir);
	JS(o, "template_id", v->template_id);
	JS(o, "pool", v->pool);
	JS(o, "state", v->state);
	JS(o, "sandbox_id", v->sandbox_id);
	JS(o, "share_link", v->share_link);
	JS(o, "sock_link", v->sock_link);
	JI(o, "created_ns", v->created_ns);
	JI(o, "age_s", v->created_ns ? (vmf_realtime_ns() - v->created_ns) / 1000000000 : 0);
	JI(o, "pss_kib", v->pss_kib);
	JI(o, "owner_uid", v->owner_uid);
	JS(o, "boot_id", v->boot_id);
	JS(o, "machine_id", v->machine_id);
	JS(o, "hostname", v->hostname);
	JD(o, "clock_error_ms", v->clock_error_ms);
	if (v->handout && *v->handout) {
		JS(o, "handout", v->handout);
		JI(o, "queue_ms", v->queue_ms);
	}
	json_object *disks = json_object_new_array();
	for (size_t i = 0; i < v->n_disks; i++)
		json_object_array_add(disks, diskinfo_json(v->disks[i]));
	json_object_object_add(o, "disks", disks);
	JS(o, "net", v->net && *v->net ? v->net : "none");
	if (v->netns && *v->netns) {
		JS(o, "netns", v->netns);
		JS(o, "netns_link", v->netns_link);
	}
	if (v->mac && *v->mac)
		JS(o, "mac", v->mac);
	json_object *fw = json_object_new_array();
	for (size_t i = 0; i < v->n_hostfwd; i++)
		json_object_array_add(fw, json_object_new_string(v->hostfwd[i]));
	json_object_object_add(o, "hostfwd", fw);
	if (v->net && strcmp(v->net, "user") == 0)
		json_object_object_add(o, "net_outbound", json_object_new_boolean(v->net_outbound));
	if (v->state_file && *v->state_file) {
		JS(o, "state_file", v->state_file);
		JI(o, "state_size", v->state_size);
		JI(o, "suspended_ns", v->suspended_ns);
	}
	if (v->lease_deadline_ns) {
		json_object *l = json_object_new_object();
		JI(l, "deadline_ns", v->lease_deadline_ns);
		JS(l, "on_expiry", v->lease_on_expiry);
		json_object_object_add(o, "lease", l);
	}
	if (v->exit)
		json_object_object_add(o, "exit", exit_json(v->exit));
	json_object *cg = json_object_new_array();
	for (size_t i = 0; i < v->n_cgroups; i++)
		json_object_array_add(cg, json_object_new_string(v->cgroups[i]));
	json_object_object_add(o, "cgroups", cg);
	json_object *hp = json_object_new_array();
	for (size_t i = 0; i < v->n_hotplug_ports; i++)
		json_object_array_add(hp, json_object_new_string(v->hotplug_ports[i]));
	json_object_object_add(o, "hotplug_ports", hp);
	if (v->stop)
		json_object_object_add(o, "stop", stop_json(v->stop));
	if (v->hypervisor) {
		json_object *h = json_object_new_object();
		JI(h, "pid", v->hypervisor->pid);
		JI(h, "vcpus", v->hypervisor->vcpus);
		JI(h, "memory_mib", v->hypervisor->memory_mib);
		JB(h, "paused", v->hypervisor->paused);
		JS(h, "kind", v->hypervisor->kind == VMF__HV__HYPERVISOR_KIND__HV_QEMU ? "qemu" : "other");
		json_object_object_add(o, "hypervisor", h);
	}
	return o;
}

/* "release|suspend at TIME (in N s)" */
static void
lease_human(const char *label, const Vmf__Control__VmInfo *v)
{
	char when[64] = "?";
	time_t t = (time_t)(v->lease_deadline_ns / 1000000000);
	struct tm tm;
	if (gmtime_r(&t, &tm))
		strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", &tm);
	long long left = (v->lease_deadline_ns - vmf_realtime_ns()) / 1000000000;
	if (left < 0)
		printf("%s%s at %s (ran out %lld s ago)\n", label, esc(v->lease_on_expiry), when, -left);
	else
		printf("%s%s at %s (in %lld s)\n", label, esc(v->lease_on_expiry), when, left);
}

static void
vminfo_human(const Vmf__Control__VmInfo *v)
{
	printf("id:           %s\n", esc(v->id));
	printf("state:        %s\n", esc(v->state));
	printf("sandbox:      %s\n", esc(v->sandbox_id));
	printf("owner:        uid %u\n", v->owner_uid);
	printf("pid:          %d\n", v->pid);
	printf("vcpus:        %u\n", v->vcpus);
	printf("memory:       %u MiB\n", v->memory_mib);
	printf("qmp socket:   %s\n", esc(v->qmp_socket));
	for (size_t i = 0; i < v->n_hotplug_ports; i++)
		printf("%s%s", i ? ", " : "hotplug:      free PCIe root ports ", esc(v->hotplug_ports[i]));
	if (v->n_hotplug_ports)
		printf(" (device_add bus=)\n");
	printf("agent socket: %s\n", esc(v->agent_socket));
	if (v->share_dir && *v->share_dir)
		printf("share dir:    %s (linked from %s)\n", esc(v->share_dir), esc(v->share_link));
	else
		printf("share dir:    none (the hypervisor has no share device)\n");
	printf("run dir:      %s (linked from %s)\n", esc(v->run_dir), esc(v->sock_link));
	printf("template:     %s\n", esc(v->template_id));
	printf("pool:         %s\n", v->pool && *v->pool ? esc(v->pool) : "(gone)");
	printf("boot id:      %s\n", v->boot_id && *v->boot_id ? esc(v->boot_id) : "(not yet warmed)");
	printf("machine id:   %s\n", v->machine_id && *v->machine_id ? esc(v->machine_id) : "none (the image has none)");
	if (v->hostname && *v->hostname) {
		printf("hostname:     %s\n", esc(v->hostname));
		printf("clock error:  %.3f ms at hand-out\n", v->clock_error_ms);
	}
	if (v->handout && *v->handout)
		printf("hand-out:     %s\n", esc(v->handout));
	if (v->queue_ms)
		printf("queued:       %u ms\n", v->queue_ms);
	for (size_t i = 0; i < v->n_disks; i++)
		diskinfo_human(v->disks[i], "disk:         ");
	if (v->netns && *v->netns)
		printf("network:      namespace %s, interface %s, MAC %s\n", esc(v->netns), esc(v->netns_link), esc(v->mac));
	else if (v->net && strcmp(v->net, "user") == 0) {
		printf("network:      user-mode, %s, MAC %s", v->net_outbound ? "outbound allowed" : "no outbound",
		       esc(v->mac));
		for (size_t i = 0; i < v->n_hostfwd; i++)
			printf("%s%s", i ? ", " : "; forwards ", esc(v->hostfwd[i]));
		printf("\n");
	}
	if (v->state_file && *v->state_file)
		printf("saved state:  %s, %.1f MiB on disk\n", esc(v->state_file), v->state_size / 1048576.0);
	if (v->lease_deadline_ns)
		lease_human("lease:        ", v);
	for (size_t i = 0; i < v->n_cgroups; i++)
		printf("%s%s\n", i ? "              " : "cgroup:       ", esc(v->cgroups[i]));
	if (v->exit)
		exit_human(v->exit, true);
	if (v->stop)
		stop_human(v->stop);
}

json_object *
vm_json(const Vmf__Control__Reply *r)
{
	return vminfo_json(r->vm);
}

void
vm_human(const Vmf__Control__Reply *r)
{
	vminfo_human(r->vm);
}

json_object *
inspect_json(const Vmf__Control__Reply *r)
{
	const Vmf__Control__InspectReply *ir = r->inspect;
	const Vmf__Control__GuestView *g = ir->guest;
	json_object *o = json_object_new_object();
	json_object_object_add(o, "vm", vminfo_json(ir->vm));
	JI(o, "host_realtime_ns", ir->host_realtime_ns);
	if (g) {
		json_object *go = json_object_new_object();
		JI(go, "online_cpus", g->online_cpus);
		JI(go, "mem_total_kib", g->mem_total_kib);
		JI(go, "realtime_ns", g->realtime_ns);
		JS(go, "random_hex", g->random_hex);
		JS(go, "boot_id", g->boot_id);
		JS(go, "machine_id", g->machine_id);
		JS(go, "hostname", g->hostname);
		JI(go, "uptime_ns", g->uptime_ns);
		JS(go, "agent_version", g->agent_version);
		json_object *ents = json_object_new_array();
		for (size_t i = 0; i < g->n_share_entries; i++)
			json_object_array_add(ents, json_object_new_string(g->share_entries[i]));
		json_object_object_add(go, "share_entries", ents);
		json_object *ifs = json_object_new_array();
		for (size_t i = 0; i < g->n_interfaces; i++)
			json_object_array_add(ifs, json_object_new_string(g->interfaces[i]));
		json_object_object_add(go, "interfaces", ifs);
		json_object_object_add(o, "guest", go);
	} else {
		JS(o, "guest_error", ir->guest_error);
	}
	return o;
}

void
inspect_human(const Vmf__Control__Reply *r)
{
	const Vmf__Control__InspectReply *ir = r->inspect;
	const Vmf__Control__GuestView *g = ir->guest;
	vminfo_human(ir->vm);
	if (g) {
		printf("guest CPUs:   %u online\n", g->online_cpus);
		printf("guest memory: %llu KiB\n", (unsigned long long)g->mem_total_kib);
		printf("guest clock:  %+.3f s from the host\n",
		       (double)(g->realtime_ns - ir->host_realtime_ns) / 1e9);
		printf("guest random: %s\n", esc(g->random_hex));
		printf("guest boot:   %s\n", esc(g->boot_id));
		printf("guest mach.:  %s\n", g->machine_id && *g->machine_id ? esc(g->machine_id) : "none");
		printf("guest host:   %s\n", esc(g->hostname));
		printf("share:       ");
		for (size_t i = 0; i < g->n_share_entries; i++)
			printf(" %s", esc(g->share_entries[i]));
		printf("\n");
		for (size_t i = 0; i < g->n_interfaces; i++)
			printf("%s%s\n", i ? "              " : "guest NICs:   ", esc(g->interfaces[i]));
	} else {
		printf("guest view:   unavailable (%s)\n", esc(ir->guest_error));
	}
}

json_object *
status_json(const Vmf__Control__Reply *r)
{
	const Vmf__Control__StatusReply *s = r->status;
	json_object *o = json_object_new_object(), *d = json_object_new_object();
	JI(d, "pid", s->pid);
	JI(d, "uptime_ms", s->uptime_ms);
	JS(d, "socket", s->socket);
	JS(d, "hypervisor", s->hypervisor);
	JS(d, "accel", s->accel);
	JS(d, "accel_why", s->accel_why);
	json_object_object_add(d, "accel_cached", json_object_new_boolean(s->accel_cached));
	json_object *caps = json_object_new_array();
	for (size_t i = 0; i < s->n_capabilities; i++)
		json_object_array_add(caps, json_object_new_string(s->capabilities[i]));
	json_object_object_add(d, "capabilities", caps);
	json_object_object_add(o, "daemon", d);
	json_object_object_add(o, "templates", template_status_json(r));
	json_object *ps = json_object_new_array();
	for (size_t i = 0; i < s->n_pools; i++) {
		Vmf__Control__PoolStatus *p = s->pools[i];
		json_object *x = json_object_new_object();
		JS(x, "name", p->name);
		JS(x, "template_id", p->template_id);
		JI(x, "vcpus", p->vcpus);
		JI(x, "memory_mib", p->memory_mib);
		JI(x, "target", p->target);
		JI(x, "ready", p->ready);
		JI(x, "filling", p->filling);
		JI(x, "failed", p->failed);
		JS(x, "last_error", p->last_error);
		JB(x, "share_memory", p->share_memory);
		JS(x, "shape", p->shape ? "auto" : "off");
		JI(x, "shape_max", p->shape_max);
		JI(x, "shape_memory_mib", p->shape_memory_mib);
		json_object *sz = json_object_new_array();
		for (size_t k = 0; k < p->n_sizes; k++) {
			const Vmf__Control__PoolSize *z = p->sizes[k];
			json_object *y = json_object_new_object(), *h = json_object_new_object();
			JI(y, "vcpus", z->vcpus);
			JI(y, "memory_mib", z->memory_mib);
			JI(y, "ready", z->ready);
			JI(y, "planned", z->planned);
			JD(y, "demand", z->demand);
			JI(h, "shaped", z->handouts_shaped);
			JI(h, "base", z->handouts_base);
			JI(h, "resize", z->handouts_resize);
			JI(h, "miss", z->handouts_miss);
			json_object_object_add(y, "handouts", h);
			json_object_array_add(sz, y);
		}
		json_object_object_add(x, "sizes", sz);
		JS(x, "image_dir", p->image_dir);
		JI(x, "queued", p->queued);
		JI(x, "queue_served", p->queue_served);
		JI(x, "queue_timeouts", p->queue_timeouts);
		JI(x, "queue_left", p->queue_left);
		JI(x, "queue_refused", p->queue_refused);
		JI(x, "parallelism", p->parallelism);
		JI(x, "max_parallelism", p->max_parallelism);
		json_object_array_add(ps, x);
	}
	json_object_object_add(o, "pools", ps);
	json_object *vs = json_object_new_array();
	for (size_t i = 0; i < s->n_vms; i++)
		json_object_array_add(vs, vminfo_json(s->vms[i]));
	json_object_object_add(o, "vms", vs);
	json_object *cn = json_object_new_object();
	JI(cn, "requests", s->requests);
	JI(cn, "hits", s->hits);
	JI(cn, "misses", s->misses);
	JI(cn, "errors", s->errors);
	json_object_object_add(o, "counters", cn);
	json_object *lat = json_object_new_object();
	JD(lat, "handout_p50_ms", s->handout_p50_ms);
	JD(lat, "handout_p99_ms", s->handout_p99_ms);
	JD(lat, "queue_wait_p50_ms", s->queue_wait_p50_ms);
	JD(lat, "queue_wait_p99_ms", s->queue_wait_p99_ms);
	JI(cn, "queued", s->queued);
	JI(cn, "max_queue", s->max_queue);
	json_object *steps = json_object_new_array();
	for (size_t i = 0; i < s->n_steps; i++) {
		json_object *x = json_object_new_object();
		JS(x, "step", s->steps[i]->step);
		JI(x, "count", s->steps[i]->count);
		JD(x, "p50_ms", s->steps[i]->p50_ms);
		JD(x, "p99_ms", s->steps[i]->p99_ms);
		json_object_array_add(steps, x);
	}
	json_object_object_add(lat, "steps", steps);
	json_object_object_add(o, "latency", lat);
	const Vmf__Control__Limits *l = s->limits;
	json_object *lim = json_object_new_object();
	JI(lim, "serial_log_kib", l ? l->serial_log_kib : 0);
	JI(lim, "scratch_max_mib", l ? l->scratch_max_mib : 0);
	JI(lim, "scratch_max_volumes", l ? l->scratch_max_volumes : 0);
	JI(lim, "tenant_max_vms", l ? l->tenant_max_vms : 0);
	JI(lim, "tenant_max_suspended", l ? l->tenant_max_suspended : 0);
	JI(lim, "tenant_max_suspended_bytes", l ? l->tenant_max_suspended_bytes : 0);
	JI(lim, "tenant_max_snapshots", l ? l->tenant_max_snapshots : 0);
	JI(lim, "tenant_max_snapshot_bytes", l ? l->tenant_max_snapshot_bytes : 0);
	json_object_object_add(o, "limits", lim);
	json_object *tn = json_object_new_array();
	for (size_t i = 0; i < s->n_tenants; i++) {
		const Vmf__Control__TenantUsage *u = s->tenants[i];
		json_object *x = json_object_new_object();
		JI(x, "uid", u->uid);
		JB(x, "limited", u->limited);
		JI(x, "vms", u->vms);
		JI(x, "suspended", u->suspended);
		JI(x, "suspended_bytes", u->suspended_bytes);
		JI(x, "snapshots", u->snapshots);
		JI(x, "snapshot_bytes", u->snapshot_bytes);
		json_object_array_add(tn, x);
	}
	json_object_object_add(o, "tenants", tn);
	return o;
}

/* "used/limit" for a tenant's row, "used" for root's and the daemon's. */
static const char *
of(char *buf, size_t n, bool limited, uint64_t used, uint64_t max)
{
	if (limited)
		snprintf(buf, n, "%llu/%llu", (unsigned long long)used, (unsigned long long)max);
	else
		snprintf(buf, n, "%llu", (unsigned long long)used);
	return buf;
}

static void
tenants_human(const Vmf__Control__StatusReply *s)
{
	const Vmf__Control__Limits *l = s->limits;
	if (!l)
		return;
	printf("\nlimits: per VM a serial log of %u KiB and %u scratch volume%s of at most %u MiB; per tenant VMs %u, "
	       "suspended %u (%llu MiB), snapshots %u (%llu MiB)\n", l->serial_log_kib, l->scratch_max_volumes,
	       l->scratch_max_volumes == 1 ? "" : "s", l->scratch_max_mib, l->tenant_max_vms, l->tenant_max_suspended,
	       (unsigned long long)(l->tenant_max_suspended_bytes >> 20), l->tenant_max_snapshots,
	       (unsigned long long)(l->tenant_max_snapshot_bytes >> 20));
	if (!s->n_tenants)
		return;
	printf("UID         VMS     SUSPENDED  SUSPENDED MiB  SNAPSHOTS  SNAPSHOT MiB\n");
	for (size_t i = 0; i < s->n_tenants; i++) {
		const Vmf__Control__TenantUsage *u = s->tenants[i];
		char a[32], b[32], c[48], d[32], e[48];
		printf("%-10u  %-6s  %-9s  %-13s  %-9s  %s%s\n", u->uid, of(a, sizeof(a), u->limited, u->vms, l->tenant_max_vms),
		       of(b, sizeof(b), u->limited, u->suspended, l->tenant_max_suspended),
		       of(c, sizeof(c), u->limited, u->suspended_bytes >> 20, l->tenant_max_suspended_bytes >> 20),
		       of(d, sizeof(d), u->limited, u->snapshots, l->tenant_max_snapshots),
		       of(e, sizeof(e), u->limited, u->snapshot_bytes >> 20, l->tenant_max_snapshot_bytes >> 20),
		       u->limited ? "" : "  (not limited)");
	}
}

json_object *
template_status_json(const Vmf__Control__Reply *r)
{
	const Vmf__Control__StatusReply *s = r->status;
	json_object *ts = json_object_new_array();
	for (size_t i = 0; i < s->n_templates; i++) {
		Vmf__Control__TemplateStatus *t = s->templates[i];
		json_object *x = json_object_new_object();
		JS(x, "id", t->id);
		JS(x, "state", t->state);
		JI(x, "vcpus", t->vcpus);
		JI(x, "memory_mib", t->memory_mib);
		JI(x, "max_vcpus", t->max_vcpus);
		JI(x, "max_memory_mib", t->max_memory_mib);
		JI(x, "memory_size", t->memory_size);
		JI(x, "state_size", t->state_size);
		JB(x, "full_memory", t->full_memory);
		JI(x, "created_ns", t->created_ns);
		JS(x, "error", t->error);
		JS(x, "image_dir", t->image_dir);
		JS(x, "name", t->name);
		JS(x, "parent_template_id", t->parent_template_id);
		JS(x, "source_vm_id", t->source_vm_id);
		JI(x, "owner_uid", t->owner_uid);
		json_object *tc = json_object_new_array();
		for (size_t k = 0; k < t->n_capabilities; k++)
			json_object_array_add(tc, json_object_new_string(t->capabilities[k]));
		json_object_object_add(x, "capabilities", tc);
		json_object_array_add(ts, x);
	}
	return ts;
}

void
template_status_human(const Vmf__Control__Reply *r)
{
	const Vmf__Control__StatusReply *s = r->status;
	printf("TEMPLATE          STATE     VCPUS  MEMORY  MAX VCPUS  MAX MEMORY  SHARING\n");
	for (size_t i = 0; i < s->n_templates; i++) {
		Vmf__Control__TemplateStatus *t = s->templates[i];
		printf("%-16.16s  %-8s  %5u  %6u  %9u  %10u  %s\n", esc(t->id), esc(t->state), t->vcpus, t->memory_mib,
		       t->max_vcpus, t->max_memory_mib, t->full_memory ? "private" : "shared");
		if (t->name && *t->name)
			printf("  snapshot %s of uid %u%s%.16s\n", esc(t->name), t->owner_uid,
			       t->source_vm_id && *t->source_vm_id ? ", from VM " : "", esc(t->source_vm_id));
		if (t->image_dir && *t->image_dir)
			printf("  image: %s\n", esc(t->image_dir));
		if (t->error && *t->error)
			printf("  error: %s\n", esc(t->error));
	}
}

void
status_human(const Vmf__Control__Reply *r)
{
	const Vmf__Control__StatusReply *s = r->status;
	printf("daemon: pid %d, up %.0f s, socket %s, %s (%s)\n", s->pid, s->uptime_ms / 1000.0, esc(s->socket),
	       esc(s->hypervisor), esc(s->accel));
	if (s->accel_why && *s->accel_why)
		printf("accelerator: %s, %s: %s\n", esc(s->accel), s->accel_cached ? "kept from an earlier probe" : "probed at start",
		       esc(s->accel_why));
	if (s->n_capabilities) {
		printf("capabilities:");
		for (size_t i = 0; i < s->n_capabilities; i++)
			printf(" %s", esc(s->capabilities[i]));
		printf("\n");
	}
	printf("\n");
	template_status_human(r);
	printf("\nPOOL              TEMPLATE          VCPUS  MEMORY  TARGET  READY  FILLING  FAILED  SHARING\n");
	for (size_t i = 0; i < s->n_pools; i++) {
		Vmf__Control__PoolStatus *p = s->pools[i];
		printf("%-16.16s  %-16.16s  %5u  %6u  %6u  %5u  %7u  %6u  %s\n", esc(p->name), esc(p->template_id), p->vcpus,
		       p->memory_mib, p->target, p->ready, p->filling, p->failed,
		       p->share_memory ? "shared" : "private");
		if (p->image_dir && *p->image_dir)
			printf("  image: %s\n", esc(p->image_dir));
		if (p->last_error && *p->last_error)
			printf("  last error: %s\n", esc(p->last_error));
		printf("  queue: %u waiting; %llu served, %llu timed out, %llu left, %llu refused; cloning %u at once "
		       "(at most %u)\n", p->queued, (unsigned long long)p->queue_served,
		       (unsigned long long)p->queue_timeouts, (unsigned long long)p->queue_left,
		       (unsigned long long)p->queue_refused, p->parallelism, p->max_parallelism);
		if (p->shape)
			printf("  shaping: auto, at most %u clones and %u MiB above base\n", p->shape_max,
			       p->shape_memory_mib);
		else
			printf("  shaping: off\n");
		for (size_t k = 0; k < p->n_sizes; k++) {
			const Vmf__Control__PoolSize *z = p->sizes[k];
			printf("  size %u vCPU / %u MiB: %u ready, %u planned, demand %.1f; hand-outs %llu shaped, "
			       "%llu base, %llu resized, %llu missed\n", z->vcpus, z->memory_mib, z->ready, z->planned,
			       z->demand, (unsigned long long)z->handouts_shaped, (unsigned long long)z->handouts_base,
			       (unsigned long long)z->handouts_resize, (unsigned long long)z->handouts_miss);
		}
	}
	printf("\nVM                                    STATE        PID  AGE(s)  VCPUS  MEMORY  PSS(KiB)  OWNER  SANDBOX\n");
	for (size_t i = 0; i < s->n_vms; i++) {
		Vmf__Control__VmInfo *v = s->vms[i];
		printf("%-36s  %-11s  %6d  %6lld  %5u  %6u  %8llu  %5u  %s\n", esc(v->id), esc(v->state), v->pid,
		       (long long)(v->created_ns ? (vmf_realtime_ns() - v->created_ns) / 1000000000 : 0), v->vcpus,
		       v->memory_mib, (unsigned long long)v->pss_kib, v->owner_uid, esc(v->sandbox_id));
		if (v->state_file && *v->state_file)
			printf("  saved state: %.1f MiB on disk in %s\n", v->state_size / 1048576.0, esc(v->state_file));
		if (v->lease_deadline_ns)
			lease_human("  lease: ", v);
		if (v->exit)
			printf("  %s %s: %s\n", v->exit->resets ? "last reset" : "exit", esc(v->exit->cause),
			       esc(v->exit->detail));
	}
	printf("\nrequests %llu, hits %llu, misses %llu, errors %llu; hand-out p50 %.1f ms, p99 %.1f ms\n",
	       (unsigned long long)s->requests, (unsigned long long)s->hits, (unsigned long long)s->misses,
	       (unsigned long long)s->errors, s->handout_p50_ms, s->handout_p99_ms);
	printf("queued %u (at most %u per pool); queue wait p50 %.1f ms, p99 %.1f ms\n", s->queued, s->max_queue,
	       s->queue_wait_p50_ms, s->queue_wait_p99_ms);
	for (size_t i = 0; i < s->n_steps; i++)
		if (s->steps[i]->count)
			printf("  %-8s p50 %7.2f ms  p99 %7.2f ms  (%llu)\n", esc(s->steps[i]->step), s->steps[i]->p50_ms,
			       s->steps[i]->p99_ms, (unsigned long long)s->steps[i]->count);
	tenants_human(s);
}

static const char *
tstate(Vmf__Catalog__TemplateState s)
{
	return s == VMF__CATALOG__TEMPLATE_STATE__TEMPLATE_READY ? "ready"
	       : s == VMF__CATALOG__TEMPLATE_STATE__TEMPLATE_BROKEN ? "broken" : "building";
}

json_object *
template_json(const char *id, const Vmf__Catalog__TemplateRecord *rec, const struct vmf_error *rec_err)
{
	json_object *o = json_object_new_object();
	if (!rec) {
		JS(o, "id", id);
		JS(o, "state", "unreadable");
		JS(o, "error", rec_err->msg);
		return o;
	}
	const Vmf__Catalog__TemplateSpec *s = rec->spec;
	double age = (vmf_realtime_ns() - rec->created_ns) / 1e9;
	JS(o, "id", rec->id);
	JS(o, "state", tstate(rec->state));
	JI(o, "vcpus", s ? s->vcpus : 0);
	JI(o, "memory_mib", s ? s->memory_mib : 0);
	JI(o, "max_vcpus", s ? s->max_vcpus : 0);
	JI(o, "max_memory_mib", s ? s->max_memory_mib : 0);
	JB(o, "full_memory", s && s->full_memory);
	JS(o, "hypervisor_version", rec->hypervisor_version);
	JI(o, "memory_size", rec->memory_size);
	JI(o, "state_size", rec->state_size);
	JI(o, "age_s", (int64_t)age);
	JI(o, "build_ms", rec->build_ms);
	JS(o, "dir", rec->dir);
	JS(o, "image_dir", rec->image_dir);
	JS(o, "error", rec->error);
	/* A snapshot's name and lineage ("" for a built template). */
	JS(o, "name", rec->name);
	JS(o, "parent_template_id", rec->parent_template_id);
	JS(o, "source_vm_id", rec->source_vm_id);
	JI(o, "hotplugged_vcpus", rec->hotplugged_vcpus);
	JI(o, "dimms", rec->n_dimms);
	json_object *caps = json_object_new_array();
	/* The template's own driver: templates of different VMMs coexist. */
	const struct vmf_hv_ops *tops = s ? vmf_hv_by_kind(s->hypervisor) : NULL;
	unsigned tcaps = tops ? tops->capabilities(NULL) : 0;
	JS(o, "hypervisor", tops ? tops->name : "unknown");
	for (unsigned bit = 1; bit <= VMF_CAP_FULL_SNAPSHOT; bit <<= 1)
		if (tcaps & bit)
			json_object_array_add(caps, json_object_new_string(vmf_cap_name(bit)));
	json_object_object_add(o, "capabilities", caps);
	return o;
}

void
template_human(const char *id, const Vmf__Catalog__TemplateRecord *rec, const struct vmf_error *rec_err)
{
	if (!rec) {
		printf("%-16.16s  unreadable: %s\n", esc(id), esc(rec_err->msg));
		return;
	}
	const Vmf__Catalog__TemplateSpec *s = rec->spec;
	double age = (vmf_realtime_ns() - rec->created_ns) / 1e9;
	const struct vmf_hv_ops *tops = s ? vmf_hv_by_kind(s->hypervisor) : NULL;
	char capstr[160] = "";
	for (unsigned bit = 1; tops && bit <= VMF_CAP_FULL_SNAPSHOT; bit <<= 1)
		if (tops->capabilities(NULL) & bit)
			snprintf(capstr + strlen(capstr), sizeof(capstr) - strlen(capstr), "%s%s",
				 capstr[0] ? "," : "", vmf_cap_name(bit));
	printf("%-16.16s  %-8s  %2u/%-2u vCPU  %5u/%-5u MiB  %-7s  state %7.1f MiB  memory %5.0f MiB  %6.0f s"
	       "  %s [%s]%s%s%s%s%s%s%s%.16s%s%s\n",
	       esc(rec->id), tstate(rec->state), s ? s->vcpus : 0, s ? s->max_vcpus : 0, s ? s->memory_mib : 0,
	       s ? s->max_memory_mib : 0, s && s->full_memory ? "private" : "shared", rec->state_size / 1048576.0,
	       rec->memory_size / 1048576.0, age, tops ? tops->name : "unknown", capstr,
	       rec->image_dir && *rec->image_dir ? "  image " : "", esc(rec->image_dir),
	       rec->error && *rec->error ? "  error: " : "", esc(rec->error),
	       rec->name && *rec->name ? "  snapshot " : "", esc(rec->name),
	       rec->name && *rec->name ? " of template " : "", esc(rec->parent_template_id),
	       rec->name && *rec->name ? " VM " : "", esc(rec->source_vm_id));
}

json_object *
snapshot_json(const Vmf__Control__Reply *r)
{
	const Vmf__Control__SnapshotReply *s = r->snapshot;
	json_object *o = json_object_new_object();
	JS(o, "template_id", s->template_id);
	JS(o, "name", s->name);
	JI(o, "total_ms", s->total_ms);
	JI(o, "paused_ms", s->paused_ms);
	JI(o, "memory_size", s->memory_size);
	JI(o, "state_size", s->state_size);
	JS(o, "method", s->method);
	return o;
}

void
snapshot_human(const Vmf__Control__Reply *r)
{
	const Vmf__Control__SnapshotReply *s = r->snapshot;
	printf("template %s (%s) in %llu ms, VM paused %llu ms, memory %llu MiB, state %llu KiB (%s)\n", esc(s->name),
	       esc(s->template_id), (unsigned long long)s->total_ms, (unsigned long long)s->paused_ms,
	       (unsigned long long)(s->memory_size >> 20), (unsigned long long)(s->state_size >> 10), esc(s->method));
}

json_object *
template_rm_json(const Vmf__Control__Reply *r)
{
	const Vmf__Control__TemplateRmReply *t = r->template_rm;
	json_object *o = json_object_new_object();
	JS(o, "template_id", t->template_id);
	JS(o, "name", t->name);
	JI(o, "owner_uid", t->owner_uid);
	JI(o, "bytes", t->bytes);
	return o;
}

void
template_rm_human(const Vmf__Control__Reply *r)
{
	const Vmf__Control__TemplateRmReply *t = r->template_rm;
	printf("removed template %s (%s) of uid %u, %.1f MiB\n", esc(t->name), esc(t->template_id), t->owner_uid,
	       t->bytes / 1048576.0);
}
