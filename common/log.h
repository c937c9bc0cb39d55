/* The one logging module.  Lines are logfmt on stderr:
 *   time=2026-11-22T23:10:00.123Z level=info msg="..." func=... vm=... template=...
 * Level from vmf_log_set_level() or VMFACTORY_LOG_LEVEL. */
#ifndef VMF_LOG_H
#define VMF_LOG_H

enum vmf_log_level { VMF_LOG_DEBUG, VMF_LOG_INFO, VMF_LOG_WARN, VMF_LOG_ERROR, VMF_LOG_OFF };

void vmf_log_set_level(enum vmf_log_level level);
enum vmf_log_level vmf_log_get_level(void);
/* "debug", "info", "warn", "error", "off"; returns -1 when unknown. */
int vmf_log_parse_level(const char *name);
/* Routes libevent's internal messages into this logger. */
void vmf_log_route_libevent(void);

/* kv: extra logfmt pairs, already formatted (e.g. "vm=abc"), may be NULL. */
void vmf_log_kv(enum vmf_log_level level, const char *func, const char *kv,
		const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#define log_debug(...) vmf_log_kv(VMF_LOG_DEBUG, __func__, NULL, __VA_ARGS__)
#define log_info(...)  vmf_log_kv(VMF_LOG_INFO, __func__, NULL, __VA_ARGS__)
#define log_warn(...)  vmf_log_kv(VMF_LOG_WARN, __func__, NULL, __VA_ARGS__)
#define log_error(...) vmf_log_kv(VMF_LOG_ERROR, __func__, NULL, __VA_ARGS__)
/* With a VM or template id attached as a logfmt key. */
#define log_vm(level, id, ...) do { char kv_[96]; snprintf(kv_, sizeof kv_, "vm=%s", (id)); \
	vmf_log_kv(level, __func__, kv_, __VA_ARGS__); } while (0)
#define log_tpl(level, id, ...) do { char kv_[96]; snprintf(kv_, sizeof kv_, "template=%.16s", (id)); \
	vmf_log_kv(level, __func__, kv_, __VA_ARGS__); } while (0)

#endif
