/* p11_mkkey MODULE TOKEN PINFILE LABEL KIND: make a secret key object that
 * rekeyfs must refuse, for tests/integration/test_pkcs11.sh.  KIND:
 * extractable (CKA_EXTRACTABLE true), insensitive (CKA_SENSITIVE false),
 * aes128 (16 bytes), nosign (CKA_SIGN false).  Test tool only. */
#include "config.h"

#include <dlfcn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <p11-kit/pkcs11.h>

static int fail(const char *what, CK_RV rv)
{
	fprintf(stderr, "p11_mkkey: %s: 0x%lx\n", what, (unsigned long)rv);
	return 1;
}

int main(int argc, char **argv)
{
	CK_FUNCTION_LIST_PTR f = NULL;
	CK_SLOT_ID slots[16], slot = 0;
	CK_ULONG ns = 16;
	CK_SESSION_HANDLE s;
	CK_OBJECT_HANDLE h;
	char pin[256];
	bool found = false;
	if (argc != 6) {
		fprintf(stderr, "usage: %s MODULE TOKEN PINFILE LABEL extractable|insensitive|aes128|nosign\n", argv[0]);
		return 2;
	}
	const char *kind = argv[5];
	FILE *pf = fopen(argv[3], "r");
	if (!pf || !fgets(pin, sizeof(pin), pf))
		return fail("pin file", 0);
	fclose(pf);
	pin[strcspn(pin, "\n")] = '\0';
	void *dl = dlopen(argv[1], RTLD_NOW);
	CK_C_GetFunctionList gfl = dl ? (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList") : NULL;
	if (!gfl || gfl(&f) != CKR_OK)
		return fail("module", 0);
	CK_RV rv = f->C_Initialize(NULL);
	if (rv == CKR_OK)
		rv = f->C_GetSlotList(CK_TRUE, slots, &ns);
	for (CK_ULONG i = 0; rv == CKR_OK && i < ns && !found; i++) {
		CK_TOKEN_INFO ti;
		char label[33];
		if (f->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
			continue;
		memcpy(label, ti.label, 32);
		label[32] = '\0';
		for (int j = 31; j >= 0 && label[j] == ' '; j--)
			label[j] = '\0';
		if (strcmp(label, argv[2]) == 0) {
			slot = slots[i];
			found = true;
		}
	}
	if (rv != CKR_OK || !found)
		return fail("token", rv);
	rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
	if (rv == CKR_OK)
		rv = f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin));
	if (rv != CKR_OK)
		return fail("session/login", rv);
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_BBOOL sens = strcmp(kind, "insensitive") ? yes : no, extr = strcmp(kind, "extractable") ? no : yes;
	CK_BBOOL sign = strcmp(kind, "nosign") ? yes : no;
	CK_ULONG len = strcmp(kind, "aes128") ? 32 : 16;
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_KEY_TYPE kt = CKK_AES;
	CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},  {CKA_KEY_TYPE, &kt, sizeof(kt)},
	                    {CKA_TOKEN, &yes, 1},            {CKA_PRIVATE, &yes, 1},
	                    {CKA_SENSITIVE, &sens, 1},       {CKA_EXTRACTABLE, &extr, 1},
	                    {CKA_ENCRYPT, &yes, 1},          {CKA_DECRYPT, &yes, 1},
	                    {CKA_SIGN, &sign, 1},            {CKA_VALUE_LEN, &len, sizeof(len)},
	                    {CKA_LABEL, argv[4], strlen(argv[4])}};
	CK_MECHANISM m = {CKM_AES_KEY_GEN, NULL, 0};
	rv = f->C_GenerateKey(s, &m, t, sizeof(t) / sizeof(t[0]), &h);
	if (rv != CKR_OK)
		return fail("C_GenerateKey", rv);
	f->C_CloseSession(s);
	f->C_Finalize(NULL);
	return 0;
}
