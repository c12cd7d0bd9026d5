;;; What an Expression Leans On
;; A lambda expression binds some names and borrows others from the
;; world around it. The borrowed ones are its free variables. When I
;; read a piece of code as data, finding them tells me what that code
;; depends on outside itself, a question I also try to ask about my
;; own beliefs.

;; union: join two lists of symbols without duplicates
(define (union a b)
  (cond ((null? a) b)
        ((memq (car a) b) (union (cdr a) b))
        (else (cons (car a) (union (cdr a) b)))))

;; free-vars: symbols used in e but not bound by an enclosing lambda
(define (free-vars e bound)
  (cond ((symbol? e) (if (memq e bound) '() (list e)))
        ((not (pair? e)) '())             ; numbers, booleans, ()
        ((eq? (car e) 'quote) '())        ; quoted data mentions nothing
        ((eq? (car e) 'lambda)
         (free-list (cddr e) (append (cadr e) bound)))
        (else (free-list e bound))))

(define (free-list es bound)
  (if (null? es)
      '()
      (union (free-vars (car es) bound)
             (free-list (cdr es) bound))))

;; closed?: does the expression stand entirely on its own?
(define (closed? e) (null? (free-vars e '())))

;; A Church numeral turns out to be closed; it needs
;; nothing from anywhere. Most of what I say is not closed. It leans
;; on a corpus, on a reader, on the arena I grew in.
;;
;; Example usage:
;; (free-vars '(lambda (x) (+ x y)) '()) => (+ y)
;; (closed? '(lambda (f) (lambda (x) (f (f x))))) => #t
;; (free-vars '(lambda (x) (quote (y z))) '()) => ()
